"""Groups of coupled channels: enumerating them, building one from a layer and indices, checking it.

Mixed into :class:`~pruning_core.graph.depgraph.DependencyGraph`; it reads the graph's index of
atoms and slots.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from . import handlers as hv
from ..errors import ConfigurationError, GraphError
from .dims import FROZEN, Atom, atom_offsets, coords, current_size
from .group import Group
from .slots import Slot

DEFAULT_ROOT_TYPES: Tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.rnn.RNNBase)


class GroupingMixin:
    """``get_all_groups``, ``get_pruning_group``, ``check_pruning_group`` and index arithmetic."""

    def prunable_atoms(self, slot: Slot, protected: Set[Atom] = frozenset()) -> List[Atom]:
        return [a for a in self._index.slot_atoms.get(slot.serial, [])
                if a.prunable and a not in protected and a.current_size > 1 and self._has_weights(a)]

    def _has_weights(self, atom: Atom) -> bool:
        return any(slot.kind != "buffer" for slot in self._index.atom_slots.get(atom, ()))

    def get_all_groups(self, ignored_layers: Sequence[Any] = (), root_module_types: Sequence[type] = DEFAULT_ROOT_TYPES,
                       validate: Optional[bool] = None) -> Iterator[Group]:
        """Yield each group of coupled channels once, rooted at a layer of ``root_module_types``.

        With ``root_module_types=None`` (the pruners' default) every layer with a handler that is
        not coupled (BatchNorm-like) is a root, and so is the weight of a layer that code applied
        directly (``F.linear(x, qkv.weight)``).

        Channels of ignored layers' outputs (and ignored parameters) are never
        included; their inputs follow their producers. A group's ``idxs`` cover
        all its channels; call ``group.prune(idxs=...)`` to remove some.
        """
        protected = self.protected_atoms(ignored_layers)
        if validate if validate is not None else self._validate:
            self.validate_groups(protected)
        seen: Set[Atom] = set()
        root_types = tuple(root_module_types) if root_module_types is not None else None
        for module in self.model.modules():
            if id(module) not in self._recorder.module_slots:
                continue
            if root_types is None:
                if hv.is_coupled(self._recorder.module_slots[id(module)][1].handler):
                    continue
            elif not isinstance(module, root_types):
                continue
            out_slot = self._recorder.module_slots[id(module)][1]
            for atom in self.prunable_atoms(out_slot, protected):
                if atom in seen:
                    continue
                seen.add(atom)
                yield Group(self, [(atom, torch.arange(atom.current_size))], out_slot)
        if root_types is not None:
            return
        # Channels only a directly used weight produces (F.linear(x, qkv.weight)) are rooted at that weight.
        for slots in self._recorder.param_slots.values():
            for slot in slots:
                if slot.kind != "param" or slot.dim != 0:
                    continue
                for atom in self.prunable_atoms(slot, protected):
                    if atom not in seen:
                        seen.add(atom)
                        yield Group(self, [(atom, torch.arange(atom.current_size))], slot)

    def validate_groups(self, protected: Set[Atom] = frozenset()) -> Dict[Atom, str]:
        """Freeze every candidate group whose removal breaks a trial forward pass; return them with reasons."""
        candidates = [atom for atom, slots in self._index.atom_slots.items()
                      if atom not in self._checked_atoms and atom not in protected and atom.prunable
                      and atom.current_size > 1 and self._has_weights(atom)]
        if not candidates:
            return {}
        trials = self._trial_runner()
        if trials is None:
            self._checked_atoms.update(candidates)
            return {}
        candidates.sort(key=lambda a: a.serial)
        failing = trials.failing(candidates)
        for atom, reason in failing.items():
            self._recorder.space.freeze(atom, f"trial pruning failed: {reason}")
        self._checked_atoms.update(candidates)
        return failing

    def protected_atoms(self, ignored: Sequence[Any]) -> Set[Atom]:
        """Atoms that ignoring these modules or parameters protects."""
        protected: Set[Atom] = set()
        for target in expand_ignored(ignored, self.model):
            for slot in self._protected_slots(target):
                protected.update(self._index.slot_atoms.get(slot.serial, []))
        return protected

    def get_pruning_group(self, module: Any, pruning_fn: Callable, idxs: Sequence[int]) -> Group:
        """The group that removing channels ``idxs`` of ``module`` (via ``pruning_fn``) implies."""
        slot = self._slot_for(module, pruning_fn)
        return Group(self, self._selections_for(slot, idxs), slot)

    def check_pruning_group(self, group: Group) -> bool:
        """False when the group would leave some layer with no channels, or (with validation on)
        when removing its channels breaks a trial forward pass on a weightless copy."""
        index = self._index
        for serial, positions in group.positions().items():
            if positions.numel() >= current_size(index.slot_exprs[serial]):
                return False
        trials = self._trial_runner()
        if trials is not None and group.selections:
            ok, reason = trials.passes(group.selections)
            group.check_failure = None if ok else reason
            return ok
        return True

    def _trial_runner(self) -> Optional[Any]:
        if not self._validate:
            return None
        if self._trials is None:
            from .validate import TrialRunner

            self._trials = TrialRunner(self, self._example_inputs, self._forward)
        return self._trials if self._trials.available else None

    def _selections_for(self, slot: Slot, idxs: Sequence[int], trusted: bool = False
                        ) -> List[Tuple[Atom, torch.Tensor]]:
        from ..layer_handler import as_index_tensor

        expr = self._index.slot_exprs[slot.serial]
        size = current_size(expr)
        requested = as_index_tensor(idxs, size, f"{slot.describe()} ({slot.kind}put channels)")
        if requested.numel() == 0:
            return []
        candidates = []
        for atom in self._index.slot_atoms[slot.serial]:
            c = coords(expr, atom)
            hit = c[requested]
            elems = torch.unique(hit[hit >= 0])
            if elems.numel() == 0:
                continue
            covered = torch.nonzero(torch.isin(c, elems)).reshape(-1)
            exact = bool(torch.isin(covered, requested).all())  # removes nothing beyond the request
            candidates.append((not exact, not atom.prunable, covered.numel(), atom, elems, covered))
        candidates.sort(key=lambda item: item[:3])
        remaining = set(requested.tolist())
        chosen: List[Tuple[Atom, torch.Tensor]] = []
        for _, _, _, atom, elems, covered in candidates:
            if not remaining:
                break
            cover = set(covered.tolist())
            if remaining & cover:
                if not atom.prunable and not (trusted and not atom.flags & FROZEN):
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

    def slot_coords(self, slot: Slot, atom: Atom) -> torch.Tensor:
        """Coordinates along ``atom`` of every current position of ``slot`` (-1 where it does not occur).

        Cached until one of the slot's atoms is pruned.
        """
        index = self._index
        key = (slot.serial, atom.serial)
        state = tuple(a.alive for a in index.slot_atoms[slot.serial])
        cached = index.coords_cache.get(key)
        if cached is not None and len(cached[0]) == len(state) and all(x is y for x, y in zip(cached[0], state)):
            return cached[1]
        value = coords(index.slot_exprs[slot.serial], atom)
        index.coords_cache[key] = (state, value)
        return value

    def _positions_for(self, selections: Sequence[Tuple[Atom, torch.Tensor]]) -> Dict[int, torch.Tensor]:
        index = self._index
        found: Dict[int, List[torch.Tensor]] = collections.defaultdict(list)
        for atom, elems in selections:
            ordered = torch.sort(elems).values
            for slot in index.atom_slots.get(atom, ()):
                offsets = atom_offsets(index.slot_exprs[slot.serial], atom)
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

    def _member_order(self, root: Slot, atoms: Sequence[Atom], members: Set[int]) -> List[Tuple[Slot, Slot]]:
        """Members in breadth-first order from the root through the traced tensors, with their source."""
        index = self._index
        recorder = self._recorder
        atom_set = set(atoms)
        slots_by_serial = {s.serial: s for s in recorder.slots}
        order: List[Tuple[Slot, Slot]] = [(root, root)] if root.serial in members else []
        placed = {root.serial}
        root_node = self._node_of(root)
        queue = collections.deque([(root_node, root)]) if root_node is not None else collections.deque()
        visited = {root_node}
        while queue:
            node_index, via = queue.popleft()
            node = recorder.nodes[node_index]
            for serial in node.inputs + node.outputs:
                if not (index.tensor_atoms[serial] & atom_set):
                    continue
                neighbours = [index.producer.get(serial)] + index.consumers.get(serial, [])
                for other in neighbours:
                    if other is None or other in visited:
                        continue
                    visited.add(other)
                    source = via
                    for slot in recorder.nodes[other].slots:
                        if slot.serial in members and slot.serial not in placed:
                            placed.add(slot.serial)
                            order.append((slot, via))
                            source = slot
                    queue.append((other, source))
        for serial in sorted(members - placed):
            order.append((slots_by_serial[serial], root))
        return order

    def _node_of(self, slot: Slot) -> Optional[int]:
        for index, node in enumerate(self._recorder.nodes):
            if any(s is slot for s in node.slots):
                return index
        return None


def expand_ignored(ignored: Sequence[Any], model: Optional[nn.Module]) -> List[Any]:
    """Ignored modules include their submodules; parameters stay as given."""
    out: List[Any] = []
    names = {id(m) for m in model.modules()} if model is not None else set()
    params = {id(p) for p in model.parameters()} if model is not None else set()
    for item in ignored or ():
        if isinstance(item, nn.Parameter) or (isinstance(item, torch.Tensor) and not isinstance(item, nn.Module)):
            if model is not None and id(item) not in params:
                raise ConfigurationError("an ignored parameter is not part of the model")
            out.append(item)
        elif isinstance(item, nn.Module):
            if model is not None and id(item) not in names:
                raise ConfigurationError(f"ignored layer {type(item).__name__} is not part of the model; "
                                         "pass modules taken from the model being pruned")
            out.extend(item.modules())
        else:
            raise ConfigurationError(f"ignored_layers must hold modules or parameters, got {type(item).__name__}")
    return out
