"""Where each pruned parameter came from: the parameter it was sliced from, along which dim, keeping what.

Handlers replace parameters with new ``nn.Parameter`` objects (see
:func:`pruning_core.layer_handler.prune_tensor`). Each replacement is noted
here, keyed by the new parameter and chained to the note of the one it replaced,
so state kept elsewhere for the old object (an optimizer's momentum and Adam
moments) can be sliced the same way afterwards
(:func:`pruning_core.utils.prune_optimizer_state`).

Notes hold weak references only: they vanish with the parameter they describe.
"""

from __future__ import annotations

import weakref
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch


class SliceNote(NamedTuple):
    """``new = old.index_select(dim, keep)``; ``parent`` is the note of ``old``, if it was sliced too."""

    old: "weakref.ReferenceType[torch.Tensor]"
    old_shape: Tuple[int, ...]
    dim: int
    keep: torch.Tensor
    parent: Optional["SliceNote"]


_NOTES: Dict[int, Tuple["weakref.ReferenceType[torch.Tensor]", SliceNote]] = {}


def note_of(tensor: torch.Tensor) -> Optional[SliceNote]:
    """The note of how ``tensor`` was sliced from an earlier parameter, or None."""
    entry = _NOTES.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]


def note_slice(old: torch.Tensor, new: torch.Tensor, dim: int, keep: torch.Tensor) -> None:
    """Record that ``new`` holds ``old``'s entries ``keep`` along ``dim``."""
    key = id(new)
    note = SliceNote(weakref.ref(old), tuple(old.shape), dim, keep.detach().to("cpu", torch.long),
                     note_of(old))
    _NOTES[key] = (weakref.ref(new, lambda _ref, key=key: _forget(key, _ref)), note)


def _forget(key: int, ref: "weakref.ReferenceType[torch.Tensor]") -> None:
    entry = _NOTES.get(key)
    if entry is not None and entry[0] is ref:
        del _NOTES[key]


def slices_since(tensor: torch.Tensor, ancestor: torch.Tensor) -> Optional[List[Tuple[int, torch.Tensor]]]:
    """The ``(dim, keep)`` slices, oldest first, that turned ``ancestor`` into ``tensor``.

    ``[]`` when they are the same object; None when ``tensor`` does not descend from ``ancestor``.
    """
    if tensor is ancestor:
        return []
    steps: List[Tuple[int, torch.Tensor]] = []
    note = note_of(tensor)
    while note is not None:
        steps.append((note.dim, note.keep))
        if note.old() is ancestor:
            return steps[::-1]
        note = note.parent
    return None


def ancestors(tensor: torch.Tensor) -> List[torch.Tensor]:
    """Every earlier parameter ``tensor`` was sliced from that is still alive, newest first."""
    found = []
    note = note_of(tensor)
    while note is not None:
        old = note.old()
        if old is not None:
            found.append(old)
        note = note.parent
    return found


__all__ = ["SliceNote", "note_of", "note_slice", "slices_since", "ancestors"]
