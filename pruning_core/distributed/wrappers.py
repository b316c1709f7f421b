"""Wrappers around a model: DistributedDataParallel after pruning, and sharded models we refuse clearly."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ..errors import ConfigurationError, DistributedError, UnsupportedModelError

# DistributedDataParallel settings a new wrapper inherits from the old one unless given again.
_CARRIED = ("device_ids", "output_device", "dim", "process_group", "find_unused_parameters",
            "gradient_as_bucket_view", "static_graph")

FSDP_RECIPE = (
    "Prune before sharding: build the model, prune it (the same way on every rank), then call fully_shard. "
    "For a model that is already sharded: plain = pruning_core.distributed.unsharded_copy(model, build) "
    "(it gathers the full state with get_model_state_dict(model, options=StateDictOptions("
    "full_state_dict=True)) into build(), a fresh unsharded copy of the architecture, on every rank), prune "
    "plain, fully_shard it again and re-create the optimizer (see the README, 'Pruning in distributed "
    "training').")


def _is_ddp(model: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def _dtensor_params(model: nn.Module) -> List[str]:
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None) if module is not None else None
    if dtensor is None:
        return []
    return [name for name, p in model.named_parameters() if isinstance(p, dtensor)]


def check_model(model: nn.Module) -> None:
    """Refuse, with the recipe, models a pruner cannot prune in place: DDP wrappers and sharded models.

    A ``DistributedDataParallel`` wrapper raises :class:`ConfigurationError` (prune ``model.module``,
    then :func:`rewrap`); FSDP (``fully_shard`` or the ``FullyShardedDataParallel`` wrapper) and other
    ``DTensor`` parameters raise :class:`UnsupportedModelError` with the supported recipe.
    """
    if _is_ddp(model):
        raise ConfigurationError(
            "the model is a DistributedDataParallel wrapper; prune the wrapped module instead "
            "(BasePruner(ddp_model.module, ...)), then wrap it again with "
            "pruning_core.distributed.rewrap(ddp_model) and call tp.utils.prune_optimizer_state(optimizer, model)")
    fsdp = sys.modules.get("torch.distributed.fsdp")
    wrapper = getattr(fsdp, "FullyShardedDataParallel", None) if fsdp is not None else None
    if wrapper is not None and any(isinstance(m, wrapper) for m in model.modules()):
        raise UnsupportedModelError(f"the model is wrapped in FullyShardedDataParallel, whose parameters are "
                                    f"flattened shards; pruning them in place is not supported. {FSDP_RECIPE}")
    sharded = _dtensor_params(model)
    if sharded:
        raise UnsupportedModelError(
            f"{len(sharded)} parameter(s) are DTensors (sharded by fully_shard or tensor parallelism), e.g. "
            f"{sharded[0]}; pruning them in place is not supported. {FSDP_RECIPE}")


def unsharded_copy(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain (unsharded) copy of a ``fully_shard``-ed model, with its full weights, on every rank.

    ``build()`` returns a fresh model of the same architecture (on the CPU, or on the meta device:
    it is materialized on the CPU then). Every rank must call this (it gathers the shards). Prune
    the copy, ``fully_shard`` it again and build a new optimizer; the sharded model is not changed.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = build()
    if not isinstance(plain, nn.Module):
        raise ConfigurationError(f"unsharded_copy: build() must return a torch.nn.Module, got {type(plain).__name__}")
    check_model(plain)  # build() must not shard it
    if any(p.is_meta for p in plain.parameters()):
        plain = plain.to_empty(device="cpu")
    plain.load_state_dict(full)
    return plain


def _shape_lines(module: nn.Module) -> List[str]:
    """Every tensor's shape and, for pruned modules, which original channels were removed."""
    from ..graph.record import changes

    lines = [f"{name}:{tuple(t.shape)}" for name, t in module.state_dict(keep_vars=True).items()
             if isinstance(t, torch.Tensor)]
    for name, sub in module.named_modules():
        changed = changes(sub)
        if changed is not None:
            lines.extend(f"{name or '<model>'} removed {key}: {sorted(gone)}"
                         for key, gone in sorted(changed["removed"].items()))
    return lines


def rewrap(ddp_model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
    """A new ``DistributedDataParallel`` around ``ddp_model.module``, after pruning changed its parameters.

    DDP keeps references to the parameters it was built with, so a pruned module needs a new
    wrapper (and it would silently copy rank 0's weights over replicas pruned differently).
    Settings (``device_ids``, ``output_device``, ``process_group``, ``find_unused_parameters``,
    ``gradient_as_bucket_view``, ``static_graph``, ``dim``) are taken from the old wrapper;
    ``ddp_kwargs`` override them. Before wrapping, the ranks compare parameter and buffer shapes
    and the channels pruning removed, and raise :class:`DistributedError` on all ranks if they
    differ. Then point the optimizer at the new parameters with
    :func:`pruning_core.utils.prune_optimizer_state` (or build a new optimizer); discard the old wrapper.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not _is_ddp(ddp_model):
        raise ConfigurationError(f"rewrap expects a DistributedDataParallel model, got {type(ddp_model).__name__}; "
                                 "wrap a plain module with torch.nn.parallel.DistributedDataParallel(module)")
    module = ddp_model.module
    settings: Dict[str, Any] = {}
    for name in _CARRIED:
        value = getattr(ddp_model, name, None)
        if value is not None:
            settings[name] = list(value) if name == "device_ids" else value
    if settings.get("device_ids") is not None and not settings["device_ids"]:
        settings.pop("device_ids")
    settings.update(ddp_kwargs)
    _check_same_shapes(module, settings.get("process_group"))
    return DistributedDataParallel(module, **settings)


def _check_same_shapes(module: nn.Module, group: Any) -> None:
    from .context import resolve
    from .state import StateReducer, digest_words

    context = resolve(None, group)
    if context is None:
        return
    reducer = StateReducer(context)
    lines = _shape_lines(module)
    digests = reducer.gather(digest_words(lines))
    if all(torch.equal(d, digests[0]) for d in digests):
        return
    every = reducer.gather_objects(lines)
    for rank, other in enumerate(every[1:], start=1):
        for mine, theirs in zip(every[0], other):
            if mine != theirs:
                raise DistributedError(f"rewrap: rank 0 has {mine} but rank {rank} has {theirs}; the ranks pruned "
                                       "differently, so the replicas cannot be wrapped together (prune with "
                                       "distributed=None or True so every rank removes the same channels)")
    raise DistributedError("rewrap: the ranks' modules have different parameters or buffers; the replicas "
                           "cannot be wrapped together")


__all__ = ["check_model", "rewrap", "unsharded_copy", "FSDP_RECIPE"]
