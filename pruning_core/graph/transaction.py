"""All-or-nothing edits of modules: snapshot before pruning, restore on failure."""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn


class ModuleSnapshot:
    """Remembers parameters, buffers and plain attributes of some modules.

    Built-in handlers replace tensors instead of editing them, so keeping the
    old objects is enough to restore them bit for bit (and keeps optimizer-held
    parameter identities). For modules pruned by other handlers, which might
    edit tensors in place, pass them in ``deep`` to also keep copies of the data.
    """

    def __init__(self, modules: Iterable[nn.Module], deep: Iterable[nn.Module] = ()) -> None:
        self._saved: List[Tuple[nn.Module, Dict, Dict, Dict]] = []
        seen = set()
        for module in modules:
            if id(module) in seen:
                continue
            seen.add(id(module))
            attrs = {k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
            self._saved.append((module, dict(module._parameters), dict(module._buffers), attrs))
        self._data: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for module in deep:
            for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
                self._data.append((tensor, tensor.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, data in self._data:
                if tensor.shape == data.shape:
                    tensor.copy_(data)
                else:
                    tensor.data = data
        for module, params, buffers, attrs in self._saved:
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            for key in [k for k in module.__dict__ if k not in attrs and k not in ("_parameters", "_buffers", "_modules")]:
                del module.__dict__[key]
            module.__dict__.update(attrs)
            init_flat = getattr(module, "_init_flat_weights", None)
            if callable(init_flat):  # RNNs cache their weight list
                init_flat()
