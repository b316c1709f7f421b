"""What pruning changed in each module, kept on the module itself as plain data.

Before a module is first changed, its plain attributes (ints, tuples, strings...)
and tensor shapes are recorded in ``module._pruning_record``; each removal notes
which original channels went away. The record pickles with the module and is
what :func:`pruning_core.state_dict` saves: new shapes, changed attributes and
lost channels, never code.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

RECORD_ATTR = "_pruning_record"
_PLAIN_SCALARS = (int, float, bool, str, type(None))


def is_plain(value: Any) -> bool:
    """Plain data: numbers, strings, None, and tuples/lists of plain data."""
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, (tuple, list)):
        return all(is_plain(v) for v in value)
    return False


def plain_attrs(module: nn.Module) -> Dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, torch.Size) else v) for k, v in module.__dict__.items()
            if not k.startswith("_") and (is_plain(v) or isinstance(v, torch.Size))}


def tensor_shapes(module: nn.Module) -> Dict[str, List[int]]:
    shapes = {name: list(t.shape) for name, t in module._parameters.items() if t is not None}
    shapes.update({name: list(t.shape) for name, t in module._buffers.items() if t is not None})
    return shapes


def ensure_record(module: nn.Module) -> Dict[str, Any]:
    """The module's record, created (with its original state) on first use."""
    record = module.__dict__.get(RECORD_ATTR)
    if record is None:
        record = {"attrs": plain_attrs(module), "shapes": tensor_shapes(module), "kept": {}, "sizes": {}}
        module.__dict__[RECORD_ATTR] = record
    return record


def note_removed(module: nn.Module, key: str, size_before: int, removed: torch.Tensor) -> None:
    """Channels ``removed`` (current positions) of the module's ``key`` side/dim are gone.

    The record is replaced, never edited in place, so restoring a module's
    ``__dict__`` after a failed step also restores its record.
    """
    record = ensure_record(module)
    kept: Optional[List[int]] = record["kept"].get(key)
    sizes = dict(record["sizes"])
    if kept is None:
        kept = list(range(size_before))
        sizes[key] = size_before
    gone = set(int(i) for i in removed.tolist())
    updated = dict(record)
    updated["kept"] = {**record["kept"], key: [orig for position, orig in enumerate(kept) if position not in gone]}
    updated["sizes"] = sizes
    module.__dict__[RECORD_ATTR] = updated


def changes(module: nn.Module) -> Optional[Dict[str, Any]]:
    """What differs from the module's recorded original state, or None if nothing does."""
    record = module.__dict__.get(RECORD_ATTR)
    if record is None:
        return None
    now_attrs = plain_attrs(module)
    attrs = {k: v for k, v in now_attrs.items() if record["attrs"].get(k, _MISSING) != v}
    shapes = {k: v for k, v in tensor_shapes(module).items() if record["shapes"].get(k) != v}
    removed = {}
    for key, kept in record["kept"].items():
        keep = set(kept)
        removed[key] = [i for i in range(record["sizes"][key]) if i not in keep]
    if not attrs and not shapes and not any(removed.values()):
        return None
    return {"attrs": attrs, "shapes": shapes, "removed": removed}


_MISSING = object()
