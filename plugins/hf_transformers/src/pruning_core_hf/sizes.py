"""Size attributes of modules that hold raw weights (routers, fused experts), kept in step with the weights.

Layers with a handler (``nn.Linear``, ``Conv1D``...) refresh their own size
attributes. A transformers module that holds raw parameters and reads a size
attribute in its forward (a router's ``hidden_dim`` in
``hidden_states.reshape(-1, self.hidden_dim)``) is fixed here: an int
attribute equal to a dimension of its parameters before pruning takes that
dimension's new size, when the old size maps to one new size only.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from pruning_core.graph.record import original_shape


def _size_map(module: nn.Module) -> Dict[int, Optional[int]]:
    """Old size -> new size over the module's own parameters (None where one old size became several)."""
    mapping: Dict[int, Optional[int]] = {}
    for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        before = original_shape(module, name)
        if before is None or len(before) != tensor.ndim:
            continue
        for old, new in zip(before, tensor.shape):
            mapping[old] = new if mapping.get(old, new) == new else None
    return mapping


def refresh_sizes(module: nn.Module) -> None:
    """Set the module's int attributes that named an old parameter size to the new size."""
    if type(module).__module__.startswith("torch.nn") or not any(True for _ in module.parameters(recurse=False)):
        return
    mapping = {old: new for old, new in _size_map(module).items() if new is not None and new != old}
    if not mapping:
        return
    for attr, value in list(vars(module).items()):
        if attr.startswith("_") or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value in mapping:
            setattr(module, attr, mapping[value])
