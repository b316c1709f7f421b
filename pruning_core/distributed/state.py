"""Summing criterion state across ranks: the one protocol every stateful criterion implements.

A criterion (or pruner) with accumulated statistics defines::

    def reduce_state(self, reducer: StateReducer, model: nn.Module) -> None:
        summed = reducer.sum({"sum/conv1": self.sums[...], "count/conv1": torch.tensor(n)})
        ...  # write the summed tensors back

Names must be the same on every rank (use module and parameter names, never ``id()``).
:meth:`StateReducer.sum` checks that every rank offers the same names and shapes
before it reduces anything, so a rank that saw no data raises on all ranks instead of hanging.
Sums stay sums: N ranks with B batches each end with what one process has after N*B batches.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import DistributedError
from .context import Context


def _signature(tensors: Dict[str, torch.Tensor]) -> List[str]:
    return [f"{name}:{tuple(t.shape)}" for name, t in sorted(tensors.items())]


def digest_words(lines: List[str], words: int = 2) -> torch.Tensor:
    """A sha256 of ``lines`` as ``words`` int64 values (something every backend can all_gather)."""
    raw = hashlib.sha256("\n".join(lines).encode()).digest()
    return torch.tensor([int.from_bytes(raw[8 * i:8 * i + 8], "little", signed=True) for i in range(words)],
                        dtype=torch.long)


class StateReducer:
    """Sums (or averages) named tensors over the ranks of one process group, in one collective."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def world_size(self) -> int:
        return self.context.world_size

    def gather(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """``all_gather`` of an equally shaped tensor; the results on the CPU."""
        import torch.distributed as dist

        local = tensor.to(self.context.device)
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local, group=self.context.group)
        return [t.cpu() for t in out]

    def gather_objects(self, value: Any) -> List[Any]:
        """``all_gather_object``: small picklable values from every rank."""
        import torch.distributed as dist

        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.context.group)
        return out

    def check_same_names(self, tensors: Dict[str, torch.Tensor], what: str) -> None:
        """Raise :class:`DistributedError` on every rank unless all ranks hold the same names and shapes."""
        lines = _signature(tensors)
        digests = self.gather(digest_words(lines))
        if all(torch.equal(d, digests[0]) for d in digests):
            return
        every = self.gather_objects(lines)
        first = _first_difference(every)
        raise DistributedError(
            f"{what}: the ranks do not hold the same statistics ({first}); every rank must feed data (and call "
            "backward / accumulate) on the same model before the pruner reduces them. Nothing was pruned.")

    def sum(self, tensors: Dict[str, torch.Tensor], what: str = "criterion state") -> Dict[str, torch.Tensor]:
        """The element-wise sum over ranks of each named tensor (new tensors, same dtypes and devices)."""
        import torch.distributed as dist

        self.check_same_names(tensors, what)
        if not tensors:
            return {}
        names = sorted(tensors)
        flat = torch.cat([tensors[n].detach().reshape(-1).to(self.context.device, torch.float64) for n in names])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.context.group)
        out: Dict[str, torch.Tensor] = {}
        offset = 0
        for name in names:
            t = tensors[name]
            out[name] = flat[offset:offset + t.numel()].reshape(t.shape).to(t.device, t.dtype)
            offset += t.numel()
        return out

    def mean(self, tensors: Dict[str, torch.Tensor], what: str = "criterion state") -> Dict[str, torch.Tensor]:
        """The element-wise mean over ranks (what DistributedDataParallel does to gradients)."""
        summed = self.sum(tensors, what)
        return {name: (t.double() / self.world_size).to(t.dtype) if t.is_floating_point() else t
                for name, t in summed.items()}


def _first_difference(every: List[List[str]]) -> str:
    """The first entry (``name:shape``) that some rank lacks, in words."""
    reference = every[0]
    for rank, lines in enumerate(every[1:], start=1):
        if lines == reference:
            continue
        only_0 = sorted(set(reference) - set(lines))
        only_r = sorted(set(lines) - set(reference))
        if only_0:
            name, shape = only_0[0].rsplit(":", 1)
            return f"rank 0 has {name!r} (shape {shape}), rank {rank} has no such entry or another shape"
        if only_r:
            name, shape = only_r[0].rsplit(":", 1)
            return f"rank {rank} has {name!r} (shape {shape}), rank 0 has no such entry or another shape"
        return f"rank {rank} lists them in another order"
    return "the digests differ"


@runtime_checkable
class ReducibleState(Protocol):
    """A criterion or pruner whose accumulated state can be summed across ranks."""

    def reduce_state(self, reducer: StateReducer, model: nn.Module) -> None:
        """Replace the accumulated state by its sum (or mean) over the ranks of ``reducer``."""


def reduce_state(owner: Any, model: nn.Module, context: Optional[Context]) -> bool:
    """Reduce ``owner``'s state across ``context`` if it has any; whether it did."""
    if context is None or not callable(getattr(owner, "reduce_state", None)):
        return False
    owner.reduce_state(StateReducer(context), model)
    return True


__all__ = ["StateReducer", "ReducibleState", "reduce_state", "digest_words"]
