"""What pruning changed in each module, kept on the module itself as plain data.

Pruning writes the record (it lives with the graph, not with serialization):
before a module is first changed, its plain attributes (ints, tuples, strings...)
and tensor shapes are stored on the module; each removal notes which original
channels went away. The record pickles with the module and is what
:func:`pruning_core.state_dict` saves: new shapes, changed attributes and lost
channels, never code.

Plugins read a module's state before pruning with :func:`original_attr` and
:func:`original_shape`; the storage itself is private.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

RECORD_ATTR = "_pruning_record"
_MISSING = object()
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
        # pruned_attrs starts empty: attributes the user sets later are not pruning's changes.
        record = {"attrs": plain_attrs(module), "shapes": tensor_shapes(module), "kept": {}, "sizes": {},
                  "pruned_attrs": []}
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
    alive = torch.ones(len(kept), dtype=torch.bool)
    alive[removed.to("cpu", torch.long)] = False
    updated = dict(record)
    updated["kept"] = {**record["kept"], key: torch.tensor(kept, dtype=torch.long)[alive].tolist()}
    updated["sizes"] = sizes
    module.__dict__[RECORD_ATTR] = updated


def note_attr_changes(module: nn.Module, before: Dict[str, Any]) -> None:
    """Remember which plain attributes a pruning operation changed (``before`` is from just before it).

    Only these are saved: attributes a later forward sets (caches such as an anchor
    grid's input ``shape``) are not structure and must not be restored on load.
    """
    record = module.__dict__.get(RECORD_ATTR)
    if record is None:
        return
    now = plain_attrs(module)
    changed = [k for k, v in now.items() if before.get(k, _MISSING) != v]
    if changed:
        updated = dict(record)
        updated["pruned_attrs"] = sorted(set(record.get("pruned_attrs", ())) | set(changed))
        module.__dict__[RECORD_ATTR] = updated


def changes(module: nn.Module) -> Optional[Dict[str, Any]]:
    """What pruning changed in the module, or None if nothing: attributes set by pruning operations
    (at their current values), resized tensors and removed channels."""
    record = module.__dict__.get(RECORD_ATTR)
    if record is None:
        return None
    now_attrs = plain_attrs(module)
    # Records made before pruned_attrs existed (pickled with a model) fall back to every changed attribute.
    names = record["pruned_attrs"] if "pruned_attrs" in record else now_attrs.keys()
    attrs = {k: now_attrs[k] for k in names if k in now_attrs and record["attrs"].get(k, _MISSING) != now_attrs[k]}
    shapes = {k: v for k, v in tensor_shapes(module).items() if record["shapes"].get(k) != v}
    removed = {}
    for key, kept in record["kept"].items():
        keep = set(kept)
        removed[key] = [i for i in range(record["sizes"][key]) if i not in keep]
    if not attrs and not shapes and not any(removed.values()):
        return None
    return {"attrs": attrs, "shapes": shapes, "removed": removed, "sizes": dict(record["sizes"])}


def adopt_record(module: nn.Module, attrs: Dict[str, Any], removed: Dict[str, List[int]],
                 sizes: Dict[str, int]) -> None:
    """Give a module rebuilt from a saved record the same record, so saving it again keeps its structure.

    Call :func:`ensure_record` before rebuilding (it captures the fresh, unpruned state).
    """
    record = dict(ensure_record(module))
    record["pruned_attrs"] = sorted(set(record.get("pruned_attrs", ())) | set(attrs))
    kept, known = dict(record["kept"]), dict(record["sizes"])
    for key, gone in removed.items():
        size = sizes.get(key)
        if isinstance(size, int):
            lost = set(gone)
            kept[key] = [i for i in range(size) if i not in lost]
            known[key] = size
    record["kept"], record["sizes"] = kept, known
    module.__dict__[RECORD_ATTR] = record


def original_attr(module: nn.Module, attr: str, default: Any = _MISSING) -> Any:
    """``module.attr`` as it was before any pruning (the current value if pruning never changed the module).

    Raises ``AttributeError`` when the module has no such attribute and no ``default`` is given.
    """
    record = module.__dict__.get(RECORD_ATTR)
    if record is not None and attr in record["attrs"]:
        return record["attrs"][attr]
    if default is _MISSING:
        return getattr(module, attr)
    return getattr(module, attr, default)


def original_shape(module: nn.Module, tensor_name: str) -> Optional[List[int]]:
    """The shape of the parameter or buffer ``tensor_name`` before any pruning, or None if there is none."""
    record = module.__dict__.get(RECORD_ATTR)
    if record is not None and tensor_name in record["shapes"]:
        return list(record["shapes"][tensor_name])
    tensor = getattr(module, tensor_name, None)
    return list(tensor.shape) if isinstance(tensor, torch.Tensor) else None


def added_tensors(module: nn.Module) -> List[str]:
    """Parameters the module has now but did not have before pruning (a bias compensation created)."""
    record = module.__dict__.get(RECORD_ATTR)
    if record is None:
        return []
    return [name for name, tensor in module._parameters.items() if tensor is not None and name not in record["shapes"]]


def was_pruned(module: nn.Module) -> bool:
    """Whether pruning has changed this module (its tensors or attributes)."""
    return changes(module) is not None


def kept_part(tensor: torch.Tensor, key: str, shape: Sequence[int], entry: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The channels of a fresh tensor that a saved record kept, or None when ``entry`` (a module's record:
    ``removed`` and ``sizes`` per ``"{key}:{dim}"``) does not say which along every dim it resized.

    For non-persistent buffers, which no weights file holds (Swin V2's zero ``k_bias``).
    """
    part = tensor
    for dim in range(tensor.ndim):
        gone, size = entry["removed"].get(f"{key}:{dim}"), entry.get("sizes", {}).get(f"{key}:{dim}")
        if gone and size == tensor.shape[dim]:
            lost = set(gone)
            part = part.index_select(dim, torch.tensor([i for i in range(size) if i not in lost], device=part.device))
    return part.clone() if tuple(part.shape) == tuple(shape) else None
