"""``ChannelIndex``: where each coupled channel (atom element) sits in every slot, and back.

Built from a finished trace and rebuilt whenever atoms are refined (a structure hint, a
freeze). Groups, importance criteria and pruners receive this object to turn a selection
of channels into per-slot positions; nobody needs the graph's internals for that.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch

from ..errors import GraphError
from . import handlers as hv
from .dims import FROZEN, Atom, Cat, Prod, current_size, leaves, resolve
from .positions import atom_offsets, coords
from .slots import Slot
from .trace import Recorder

# A selection: some elements (current coordinates) of one leaf atom.
Selection = Tuple[Atom, torch.Tensor]


class ChannelIndex:
    """Lookups derived from a trace: slots by atom, atoms by slot, tensor producers and consumers."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.slot_exprs: Dict[int, Any] = {}
        self.slot_atoms: Dict[int, List[Atom]] = {}
        self.atom_slots: Dict[Atom, List[Slot]] = collections.defaultdict(list)
        for slot in recorder.slots:
            expr = resolve(slot.expr)
            self.slot_exprs[slot.serial] = expr
            if slot.kind == "in" and hv.is_coupled(slot.handler):
                continue  # same channels as the output slot; pruned once, through it
            for leaf in _repeated_in_product(expr):
                leaf.flags |= FROZEN
                if len(leaf.notes) < 4:
                    leaf.notes.append(f"indexes two dims of {slot.describe()} at once")
            atoms: List[Atom] = []
            for leaf in leaves(expr):
                if leaf not in atoms:
                    atoms.append(leaf)
            self.slot_atoms[slot.serial] = atoms
            for atom in atoms:
                self.atom_slots[atom].append(slot)
        self.tensor_atoms: List[Set[Atom]] = []
        for dims in recorder.tensor_dims:
            found: Set[Atom] = set()
            for expr in dims:
                found.update(leaves(expr))
            self.tensor_atoms.append(found)
        self.slots_by_serial: Dict[int, Slot] = {slot.serial: slot for slot in recorder.slots}
        self._coords_cache: Dict[Tuple[int, int], Tuple[Tuple[Any, ...], torch.Tensor]] = {}
        self.producer: Dict[int, int] = {}
        self.consumers: Dict[int, List[int]] = collections.defaultdict(list)
        for number, node in enumerate(recorder.nodes):
            for serial in node.outputs:
                self.producer.setdefault(serial, number)
            for serial in node.inputs:
                self.consumers[serial].append(number)

    # -- slots and atoms -----------------------------------------------------------
    def slot(self, serial: int) -> Slot:
        return self.slots_by_serial[serial]

    def expr(self, slot: Slot) -> Any:
        """The slot's dimension expression (resolved when the index was built)."""
        return self.slot_exprs[slot.serial]

    def size(self, slot: Slot) -> int:
        """How many positions the slot has now (after earlier pruning)."""
        return current_size(self.slot_exprs[slot.serial])

    def atoms_of(self, slot: Slot) -> List[Atom]:
        return self.slot_atoms.get(slot.serial, [])

    def slots_of(self, atom: Atom) -> List[Slot]:
        return self.atom_slots.get(atom, [])

    def atoms(self) -> Iterable[Atom]:
        return self.atom_slots.keys()

    def has_weights(self, atom: Atom) -> bool:
        """Whether some parameter (not only a buffer) holds this atom's channels."""
        return any(slot.kind != "buffer" for slot in self.atom_slots.get(atom, ()))

    def prunable_atoms(self, slot: Slot, protected: Set[Atom] = frozenset()) -> List[Atom]:
        """Atoms of ``slot`` that could lose channels: not fixed, not protected, more than one left."""
        return [a for a in self.slot_atoms.get(slot.serial, [])
                if a.prunable and a not in protected and a.current_size > 1 and self.has_weights(a)]

    # -- index arithmetic --------------------------------------------------------------
    def slot_coords(self, slot: Slot, atom: Atom) -> torch.Tensor:
        """Coordinates along ``atom`` of every current position of ``slot`` (-1 where it does not occur).

        Cached until one of the slot's atoms is pruned.
        """
        key = (slot.serial, atom.serial)
        state = tuple(a.alive for a in self.slot_atoms[slot.serial])
        cached = self._coords_cache.get(key)
        if cached is not None and len(cached[0]) == len(state) and all(x is y for x, y in zip(cached[0], state)):
            return cached[1]
        value = coords(self.slot_exprs[slot.serial], atom)
        self._coords_cache[key] = (state, value)
        return value

    def selections_for(self, slot: Slot, idxs: Sequence[int], trusted: bool = False,
                       explicit: bool = False) -> List[Selection]:
        """The atom elements that removing positions ``idxs`` of ``slot`` means.

        ``explicit`` (a user naming these channels) also accepts channels that reach a model
        output; ``trusted`` (replaying a saved history) also accepts atoms that are only
        structured or outputs, never frozen ones.
        """
        from ..layer_handler import as_index_tensor

        expr = self.slot_exprs[slot.serial]
        size = current_size(expr)
        requested = as_index_tensor(idxs, size, f"{slot.describe()} ({slot.kind}put channels)")
        if requested.numel() == 0:
            return []
        candidates = []
        for atom in self.slot_atoms[slot.serial]:
            c = coords(expr, atom)
            hit = c[requested]
            elems = torch.unique(hit[hit >= 0])
            if elems.numel() == 0:
                continue
            covered = torch.nonzero(torch.isin(c, elems)).reshape(-1)
            exact = bool(torch.isin(covered, requested).all())  # removes nothing beyond the request
            usable = atom.prunable or (explicit and atom.prunable_on_request)
            candidates.append((not exact, not usable, covered.numel(), atom, elems, covered))
        candidates.sort(key=lambda item: item[:3])
        remaining = set(requested.tolist())
        chosen: List[Selection] = []
        for _, _, _, atom, elems, covered in candidates:
            if not remaining:
                break
            cover = set(covered.tolist())
            if remaining & cover:
                allowed = atom.prunable or (explicit and atom.prunable_on_request) or \
                    (trusted and not atom.flags & FROZEN)
                if not allowed:
                    hint = "" if atom.flags & FROZEN else (
                        " (a structure hint such as num_heads, or DG.set_channel_structure, can allow it)")
                    raise GraphError(
                        f"channels {sorted(remaining & cover)[:8]} of {slot.describe()} cannot be pruned: "
                        f"{'; '.join(atom.notes) or 'their size is fixed'}{hint}")
                chosen.append((atom, elems))
                remaining -= cover
        if remaining:
            raise GraphError(f"channels {sorted(remaining)[:8]} of {slot.describe()} are not prunable "
                             "(their size is fixed by the model's inputs, outputs or code)")
        return chosen

    def positions_for(self, selections: Sequence[Selection]) -> Dict[int, torch.Tensor]:
        """Slot serial -> sorted positions (current coordinates) that the selections remove there."""
        found: Dict[int, List[torch.Tensor]] = collections.defaultdict(list)
        for atom, elems in selections:
            ordered = torch.sort(elems).values
            for slot in self.atom_slots.get(atom, ()):
                offsets = atom_offsets(self.slot_exprs[slot.serial], atom)
                if offsets is not None:  # fast path: the atom is whole parts of the slot
                    found[slot.serial].extend(ordered + offset for offset in offsets)
                    continue
                c = self.slot_coords(slot, atom)
                found[slot.serial].append(torch.nonzero(torch.isin(c, elems)).reshape(-1))
        out: Dict[int, torch.Tensor] = {}
        for serial, parts in found.items():
            positions = parts[0] if len(parts) == 1 else torch.unique(torch.cat(parts))
            if positions.numel():
                out[serial] = positions
        return out

    def member_order(self, root: Slot, atoms: Sequence[Atom], members: Set[int]) -> List[Tuple[Slot, Slot]]:
        """Members in breadth-first order from the root through the traced tensors, with their source."""
        nodes = self.recorder.nodes
        atom_set = set(atoms)
        order: List[Tuple[Slot, Slot]] = [(root, root)] if root.serial in members else []
        placed = {root.serial}
        root_node = self._node_of(root)
        queue = collections.deque([(root_node, root)]) if root_node is not None else collections.deque()
        visited = {root_node}
        while queue:
            node_number, via = queue.popleft()
            node = nodes[node_number]
            for serial in node.inputs + node.outputs:
                if not (self.tensor_atoms[serial] & atom_set):
                    continue
                for other in [self.producer.get(serial)] + self.consumers.get(serial, []):
                    if other is None or other in visited:
                        continue
                    visited.add(other)
                    source = via
                    for slot in nodes[other].slots:
                        if slot.serial in members and slot.serial not in placed:
                            placed.add(slot.serial)
                            order.append((slot, via))
                            source = slot
                    queue.append((other, source))
        for serial in sorted(members - placed):
            order.append((self.slots_by_serial[serial], root))
        return order

    def _node_of(self, slot: Slot) -> Optional[int]:
        for number, node in enumerate(self.recorder.nodes):
            if any(s is slot for s in node.slots):
                return number
        return None


def _repeated_in_product(expr: Any) -> Set[Atom]:
    """Atoms that occur in two factors of one product (ambiguous coordinates)."""
    found: Set[Atom] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if type(node) is Prod:
            seen: Set[Atom] = set()
            for factor in node.factors:
                inner = set(leaves(factor))
                found |= seen & inner
                seen |= inner
            stack.extend(node.factors)
        elif type(node) is Cat:
            stack.extend(node.parts)
    return found


def mark_removed(selections: Sequence[Selection]) -> None:
    """Record that these atom elements (current coordinates) are gone."""
    for atom, elems in selections:
        alive = atom.alive.clone() if atom.alive is not None else torch.ones(atom.size, dtype=torch.bool)
        live = torch.nonzero(alive).reshape(-1)
        alive[live[elems]] = False
        atom.alive = alive
