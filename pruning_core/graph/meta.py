"""Run a model on the ``meta`` device without touching its real weights.

Tracing and verification only need shapes. Swapping every parameter and buffer
for a weightless ``meta`` twin (ties kept) and restoring them afterwards makes a
forward pass cost no arithmetic. Models whose forward depends on tensor values
(``.item()``, data-dependent shapes) cannot run this way; callers fall back to
real tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import torch
from torch import nn

from .transaction import ModuleSnapshot


def to_meta(obj: Any) -> Any:
    """Tensors inside ``obj`` (sequences, dicts) moved to ``meta``; everything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to("meta")
    if isinstance(obj, (list, tuple)):
        converted = [to_meta(o) for o in obj]
        return type(obj)(*converted) if hasattr(obj, "_fields") else type(obj)(converted)
    if isinstance(obj, dict):
        return type(obj)((k, to_meta(v)) for k, v in obj.items())
    return obj


@contextlib.contextmanager
def weights_on_meta(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model's parameters and buffers are ``meta`` tensors; restored on exit."""
    modules = list(model.modules())
    if all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers())):
        yield model
        return
    snapshot = ModuleSnapshot(modules)
    twins: Dict[int, torch.Tensor] = {}
    try:
        for module in modules:
            for name, param in list(module._parameters.items()):
                if param is not None:
                    if id(param) not in twins:
                        twins[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                        requires_grad=param.requires_grad)
                    module._parameters[name] = twins[id(param)]
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    if id(buf) not in twins:
                        twins[id(buf)] = buf.to("meta")
                    module._buffers[name] = twins[id(buf)]
        yield model
    finally:
        snapshot.restore()
