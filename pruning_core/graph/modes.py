"""Layers that run only in training mode (GoogLeNet's auxiliary classifiers).

A model traced in eval mode never reaches them, so they would keep their widths and fail
on pruned inputs when training resumes. When an eval-mode trace misses layers with
parameters, the model is traced once more in training mode; if that reaches them, the
graph keeps that trace and every later check of the pruned model runs in training mode
too, with the module modes and the buffers (BatchNorm statistics) put back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List

import torch
from torch import nn


@contextlib.contextmanager
def training_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in training mode, then restore every module's mode and every real buffer."""
    modes: Dict[nn.Module, bool] = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b is not None and not b.is_meta]
    model.train()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for buffer, saved in buffers:
                if buffer.shape == saved.shape:
                    buffer.copy_(saved)


def in_training_mode(forward: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Any]:
    """``forward`` that runs the model in training mode (see :func:`training_mode`)."""
    def run(model: nn.Module, inputs: Any) -> Any:
        with training_mode(model):
            return forward(model, inputs)
    return run


def not_reached(model: nn.Module, recorder: Any) -> List[str]:
    """Names of layers with parameters that the traced forward never ran (and no handler covered)."""
    used = {id(slot.target.owner) for slot in recorder.slots if slot.is_param}
    # a parameter whose dims are all 1 (a scale left with one channel) has no slot, but was read
    used |= {id(recorder.param_owner[t][1]) for t in recorder.param_slots if t in recorder.param_owner}
    ran = recorder.module_slots
    # A layer inside a handled layer that ran (MultiheadAttention.out_proj) is pruned by that layer's handler.
    covered = {inner_id for inner_id, owner in recorder.cover_owner.items() if id(owner) in ran}
    return [name for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False)) and id(module) not in ran
            and id(module) not in used and id(module) not in covered]
