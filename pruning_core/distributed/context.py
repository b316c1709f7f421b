"""Which process group a pruner talks to, if any.

``distributed=None`` (the default) means: reduce and check across ranks when
``torch.distributed`` is initialized and the group has more than one rank;
``True`` insists on it (an error if it is not initialized), ``False`` turns it off.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from ..errors import ConfigurationError


class Context(NamedTuple):
    """A process group seen from this rank."""

    group: Any
    rank: int
    world_size: int
    device: torch.device  # where collectives run: the current CUDA device for NCCL, else the CPU


def initialized() -> bool:
    """Whether ``torch.distributed`` is available and initialized in this process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def resolve(distributed: Optional[bool] = None, process_group: Any = None) -> Optional[Context]:
    """The context to reduce and check with, or None to work on this process alone."""
    if distributed is not None and not isinstance(distributed, bool):
        raise ConfigurationError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return None
    if not initialized():
        if distributed:
            raise ConfigurationError(
                "distributed=True but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group(...) first (torchrun sets up the environment), "
                "or leave distributed=None")
        return None
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    if world < 2 and not distributed:
        return None
    backend = str(dist.get_backend(process_group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Context(process_group, dist.get_rank(process_group), world, device)


__all__ = ["Context", "initialized", "resolve"]
