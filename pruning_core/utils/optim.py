"""Keep an optimizer's state across pruning: slice momentum and Adam moments by the kept channels."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigurationError, warn
from ..lineage import ancestors, slices_since


def _apply(value: torch.Tensor, steps: List[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    for dim, keep in steps:
        value = torch.index_select(value, dim, keep.to(value.device))
    return value.contiguous()


def _slice_state(state: Dict[str, Any], old_shape: torch.Size, steps: List[Tuple[int, torch.Tensor]],
                 where: str) -> Dict[str, Any]:
    """Each per-element tensor of ``state`` (shaped like the old parameter) sliced; scalars kept."""
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == old_shape:
            out[key] = _apply(value, steps)
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            warn(f"prune_optimizer_state: {where}: state {key!r} has shape {tuple(value.shape)}, not the "
                 f"parameter's {tuple(old_shape)}; it was dropped and starts afresh")
        else:
            out[key] = value
    return out


def prune_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Point ``optimizer`` at ``model``'s pruned parameters, keeping their state for the kept channels.

    Pruning replaces each changed parameter with a new, smaller one. For every parameter of
    ``optimizer`` that pruning replaced, this puts the new parameter in its place in
    ``param_groups`` and slices each per-element state tensor (SGD's ``momentum_buffer``,
    Adam's/AdamW's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``...) by the kept indices along
    every pruned dim; scalar state (``step``) is kept. Works after any number of pruning
    steps. Returns how many parameters were replaced.

    Call it after each ``pruner.step()`` (and before :func:`pruning_core.distributed.rewrap` or
    the next ``optimizer.step()``). Parameters pruned by a handler that does not use
    :func:`pruning_core.layer_handler.prune_tensor` cannot be traced and raise
    :class:`~pruning_core.errors.ConfigurationError`.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigurationError(f"prune_optimizer_state expects a torch.optim.Optimizer, got "
                                 f"{type(optimizer).__name__}")
    current = {id(p): p for p in model.parameters()}
    names = {id(p): name for name, p in model.named_parameters()}
    replacement: Dict[int, nn.Parameter] = {}
    for param in current.values():
        for old in ancestors(param):
            replacement.setdefault(id(old), param)
    replaced = 0
    for index, group in enumerate(optimizer.param_groups):
        params = list(group["params"])
        for position, old in enumerate(params):
            if id(old) in current:
                continue
            new: Optional[nn.Parameter] = replacement.get(id(old))
            if new is None:
                raise ConfigurationError(
                    f"prune_optimizer_state: parameter {position} of param group {index} (shape "
                    f"{tuple(old.shape)}) is not in the model and no pruned parameter descends from it; pass "
                    "the model the optimizer was built on, or build a new optimizer")
            steps = slices_since(new, old)
            where = names.get(id(new), f"param group {index}, parameter {position}")
            if old in optimizer.state:
                optimizer.state[new] = _slice_state(optimizer.state.pop(old), old.shape, steps or [], where)
            params[position] = new
            replaced += 1
        group["params"] = params
    return replaced


__all__ = ["prune_optimizer_state"]
