"""Counting MACs with ``torch.utils.flop_counter`` and parameters by unique tensor.

Counting never changes the model: it runs in eval mode (so BatchNorm statistics are not
updated, and a batch of one works in BatchNorm1d), restores every module's mode afterwards,
and puts back any buffer a forward replaced or modified.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..calling import call_model


def count_params(model: nn.Module) -> int:
    """Number of parameter elements, counting shared (tied) tensors once."""
    return sum(p.numel() for p in model.parameters())


_run = call_model


class _Untouched:
    """Puts every module in eval mode for a ``with`` block, then restores modes and buffers exactly."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: List[Tuple[nn.Module, bool]] = []
        self.buffers: List[Tuple[nn.Module, str, Optional[torch.Tensor], Optional[torch.Tensor]]] = []

    def __enter__(self) -> "_Untouched":
        for module in self.model.modules():
            self.modes.append((module, module.training))
            for name, buffer in module._buffers.items():
                copy = None
                if isinstance(buffer, torch.Tensor) and buffer.device.type != "meta":
                    copy = buffer.detach().clone()
                self.buffers.append((module, name, buffer, copy))
        self.model.eval()
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, training in self.modes:
            module.training = training
        with torch.no_grad():
            for module, name, buffer, copy in self.buffers:
                module._buffers[name] = buffer  # a forward may have replaced it
                if copy is not None and not torch.equal(buffer, copy):
                    buffer.copy_(copy)


def count_ops_and_params(model: nn.Module, example_inputs: Any, layer_wise: bool = False,
                         forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None
                         ) -> Union[Tuple[int, int], Tuple[int, int, Dict[nn.Module, int], Dict[nn.Module, int]]]:
    """Multiply-accumulates of one forward pass and the parameter count.

    MACs are ``torch.utils.flop_counter``'s FLOPs divided by two; like that counter,
    they cover matrix products, convolutions and attention, which is where pruning
    changes the cost. Works on ``meta`` tensors. The model is run in eval mode and left
    exactly as it was (mode, buffers).

    With ``layer_wise=True`` returns Torch-Pruning's four values:
    ``(macs, params, macs_by_module, params_by_module)``, the dicts keyed by module
    (every module of ``model``, including containers, which count their children).
    """
    counter = FlopCounterMode(display=False)
    with _Untouched(model), torch.no_grad(), counter:
        _run(model, example_inputs, forward_fn)
    macs = counter.get_total_flops() // 2
    params = count_params(model)
    if not layer_wise:
        return macs, params
    # The counter names modules "RootClass.sub.module" and adds a "Global" total.
    root = type(model).__name__
    by_name: Dict[str, int] = {}
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        relative = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        by_name[relative] = sum(counts.values()) // 2
    layer_macs: Dict[nn.Module, int] = {}
    layer_params: Dict[nn.Module, int] = {}
    for name, module in model.named_modules():
        layer_macs[module] = macs if name == "" else by_name.get(name, 0)
        layer_params[module] = count_params(module)
    return macs, params, layer_macs, layer_params
