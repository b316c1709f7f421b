"""Counting MACs with ``torch.utils.flop_counter`` and parameters by unique tensor."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameter elements, counting shared (tied) tensors once."""
    return sum(p.numel() for p in model.parameters())


def _run(model: nn.Module, example_inputs: Any, forward_fn: Optional[Callable[[nn.Module, Any], Any]]) -> Any:
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


def count_ops_and_params(model: nn.Module, example_inputs: Any, layer_wise: bool = False,
                         forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None
                         ) -> Union[Tuple[int, int], Tuple[int, int, Dict[str, int]]]:
    """Multiply-accumulates of one forward pass and the parameter count.

    MACs are ``torch.utils.flop_counter``'s FLOPs divided by two; like that
    counter, they cover matrix products, convolutions and attention, which is
    where pruning changes the cost. Works on ``meta`` tensors. With
    ``layer_wise=True`` also returns MACs per module name.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        _run(model, example_inputs, forward_fn)
    macs = counter.get_total_flops() // 2
    params = count_params(model)
    if not layer_wise:
        return macs, params
    # The counter names modules "RootClass.sub.module" and adds a "Global" total; use model-relative names.
    root = type(model).__name__
    per_module: Dict[str, int] = {}
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        relative = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        per_module[relative] = sum(counts.values()) // 2
    return macs, params, per_module
