"""Removing channels from a traced graph's model: handlers, fix-ups, records, undo and replay.

Mixed into :class:`~pruning_core.graph.depgraph.DependencyGraph`; every step either completes or
leaves the model as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigurationError, EmptyLayerError, GraphError, PruneFailedError
from . import handlers as hv
from .dims import Atom, current_size
from .group import slot_handler
from .slots import Slot
from .transaction import ModuleSnapshot
from .record import ensure_record, note_attr_changes, note_removed, plain_attrs


class PruningMixin:
    """``_prune_selections`` and what it needs; ``replay``, ``verify`` and state save/restore."""

    def _prune_selections(self, selections: Sequence[Tuple[Atom, torch.Tensor]], root: Optional[Slot] = None) -> None:
        if not selections:
            return
        index = self._index
        positions = self._positions_for(selections)
        slots = index.slots_by_serial
        for serial, pos in positions.items():
            if pos.numel() >= current_size(index.slot_exprs[serial]):
                raise EmptyLayerError(
                    f"pruning would remove all {pos.numel()} channels of {slots[serial].describe()}; "
                    "keep at least one (check DG.check_pruning_group(group) first)")
        members = [slots[s] for s in positions]
        names = {self._module_names.get(id(slot.target.owner), ""): slot.target.owner for slot in members}
        affected = self._with_ancestors(self._lookup, names)
        # Handlers may edit their layer's children (MultiheadAttention.out_proj): cover them too.
        touched = list(affected.values()) + [child for slot in members if not slot.is_param
                                             for child in slot.target.owner.modules()]
        deep = [slot.target.owner for slot in members if not slot.is_param and not _is_builtin(slot.handler)]
        snapshot = ModuleSnapshot(touched + self._shared_owners(), deep=deep)
        for module in touched:
            ensure_record(module)  # remember the original state before anything changes
        attrs_before = [(module, plain_attrs(module)) for module in {id(m): m for m in touched}.values()]
        saved_alive = [(atom, atom.alive) for atom, _ in selections]
        try:
            for slot in members:
                key = f"param:{slot.target.attr}:{slot.dim}" if slot.is_param else slot.kind
                note_removed(slot.target.owner, key, current_size(index.slot_exprs[slot.serial]),
                             positions[slot.serial])
            self._apply(self.model, self._lookup, members, positions, lambda slot: slot.target.owner, selections)
            self._retie_shared_parameters()
            for module, before in attrs_before:
                note_attr_changes(module, before)
        except Exception as exc:
            snapshot.restore()
            for atom, alive in saved_alive:
                atom.alive = alive
            if isinstance(exc, PruneFailedError):
                raise
            raise PruneFailedError(f"tied parameters could not be kept tied: {exc}. The model was restored.") from exc
        root = root if root is not None and root.serial in positions else members[0]
        self.history.append({"module": root.target.name, "attr": root.target.attr, "kind": root.kind,
                             "dim": root.dim, "idxs": positions[root.serial].tolist()})

    def _apply(self, model: nn.Module, lookup: Dict[str, nn.Module], members: Sequence[Slot],
               positions: Dict[int, torch.Tensor], owner_of: Callable[[Slot], nn.Module],
               selections: Sequence[Tuple[Atom, torch.Tensor]]) -> None:
        """Run the handlers of ``members`` on ``model`` (the real one or a trial copy), then the fix-ups.

        The channel bookkeeping is updated before the fix-ups, so they see the new sizes
        (``channel_structure``); it is put back if anything fails.
        """
        from ..builtin.handlers.parameter import prune_parameter_handler

        current: Optional[Slot] = None
        saved_alive = [(atom, atom.alive) for atom, _ in selections]
        try:
            for slot in members:
                current = slot
                owner = owner_of(slot)
                idxs = positions[slot.serial]
                if slot.is_param:
                    prune_parameter_handler.prune_attribute(owner, slot.target.attr, slot.dim, idxs)
                elif _is_builtin(slot.handler):
                    slot_handler(slot)(owner, idxs)
                else:
                    slot_handler(slot)(owner, idxs.tolist())  # the contract promises a list of ints
            current = None
            self._refresh_unhandled(members, owner_of)
            _mark_removed(selections)
            names = {self._module_names.get(id(slot.target.owner), ""): owner_of(slot) for slot in members}
            self._hub.fixup_after_prune(model=model, modules=self._with_ancestors(lookup, names), graph=self)
        except Exception as exc:
            for atom, alive in saved_alive:
                atom.alive = alive
            if current is not None:
                who = "parameter pruner" if current.is_param else hv.handler_name(current.handler)
                where = f"{who} failed on {current.describe()} ({type(current.target.owner).__name__})"
            else:
                where = "a fix-up hook failed after pruning"
            raise PruneFailedError(f"{where}: {type(exc).__name__}: {exc}. The model was restored unchanged.") \
                from exc

    def _apply_selections_to(self, model: nn.Module, lookup: Dict[str, nn.Module],
                             selections: Sequence[Tuple[Atom, torch.Tensor]]) -> None:
        """Prune a copy of the model (same module names) the way ``selections`` would prune the model."""
        positions = self._positions_for(selections)
        slots = {s.serial: s for s in self._recorder.slots}
        members = [slots[s] for s in positions]
        self._apply(model, lookup, members, positions,
                    lambda slot: lookup[self._module_names.get(id(slot.target.owner), "")], selections)

    def save_state(self) -> Any:
        """Everything pruning can change (modules, channel bookkeeping, history), to undo a whole step."""
        return (ModuleSnapshot(self._lookup.values()), [(atom, atom.alive) for atom in self._recorder.space.atoms],
                len(self.history))

    def restore_state(self, state: Any) -> None:
        snapshot, alive, history_length = state
        snapshot.restore()
        for atom, value in alive:
            atom.alive = value
        del self.history[history_length:]

    def freeze(self, atoms: Iterable[Atom], reason: str) -> None:
        """Never prune these atoms again (for example after they broke a verification pass)."""
        for atom in atoms:
            self._recorder.space.freeze(atom, reason)
        self._index_cache = None

    def verify(self) -> Optional[str]:
        """Run the example inputs through the model; return why it failed, or None if outputs keep their shapes."""
        from .meta import to_meta, weights_on_meta
        from .capture import EvalWhereHandlersAsk, ShapeOnlyForwards
        from .validate import shapes_match, shapes_of

        try:
            with torch.no_grad(), EvalWhereHandlersAsk(self.model, self._resolve_handler):
                if self._shapes_on_meta:
                    with weights_on_meta(self.model), ShapeOnlyForwards(self.model, self._resolve_handler):
                        output = self._forward(self.model, to_meta(self._example_inputs))
                else:
                    output = self._forward(self.model, self._example_inputs)
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if not shapes_match(self._recorder.output_shapes, shapes_of(output), self._recorder.output_dynamic):
            return f"the output shapes changed from {self._recorder.output_shapes} to {shapes_of(output)}"
        return None

    def _refresh_unhandled(self, members: Sequence[Slot], owner_of: Callable[[Slot], nn.Module]) -> None:
        """Layers traced through their weights still get their size attributes updated."""
        unhandled = self._recorder.unhandled
        for slot in {id(s.target.owner): s for s in members if s.is_param}.values():
            entry = unhandled.get(id(slot.target.owner))
            refresh = getattr(entry[1], "refresh_attributes", None) if entry else None
            if callable(refresh):
                refresh(owner_of(slot))

    @staticmethod
    def _with_ancestors(lookup: Dict[str, nn.Module], named: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
        out: Dict[str, nn.Module] = {}
        for name in list(named):
            parts = name.split(".") if name else []
            for depth in range(len(parts), -1, -1):
                prefix = ".".join(parts[:depth])
                if prefix in lookup:
                    out.setdefault(prefix, lookup[prefix])
        out.update(named)
        return out

    def _shared_owners(self) -> List[nn.Module]:
        return [module for group in self._shared_params for module, _ in group]

    def _retie_shared_parameters(self) -> None:
        for group in self._shared_params:
            tensors = [getattr(module, attr) for module, attr in group]
            if all(t is tensors[0] for t in tensors):
                continue
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) > 1:
                raise GraphError("tied parameters were pruned to different shapes: " +
                                 ", ".join(f"{self._module_names.get(id(m), '?')}.{a}" for m, a in group))
            chosen = tensors[0]
            for module, attr in group:
                module._parameters[attr] = chosen

    def replay(self, history: Sequence[Dict[str, Any]]) -> None:
        """Apply a recorded pruning history (``DG.history``) to this graph's model, in order.

        Use it on a freshly built copy of the unpruned model to rebuild a pruned one.
        """
        modules = self._lookup
        for number, entry in enumerate(history):
            try:
                owner = modules[entry["module"]]
                if entry.get("attr"):
                    target: Any = getattr(owner, entry["attr"])
                    fn = _param_fn(entry.get("dim", 0))
                else:
                    target = owner
                    fn = _module_fn(entry["kind"])
                slot = self._slot_for(target, fn) if not entry.get("attr") else self._param_slot(target, entry["dim"])
                selections = self._selections_for(slot, entry["idxs"], trusted=True)
            except (KeyError, AttributeError, TypeError) as exc:
                raise ConfigurationError(f"pruning history entry {number} does not match this model "
                                         f"({type(exc).__name__}: {exc}): {entry!r:.200}") from None
            self._prune_selections(selections, slot)

    def _param_slot(self, tensor: torch.Tensor, dim: int) -> Slot:
        for slot in self._recorder.param_slots.get(id(tensor), []):
            if slot.dim == dim:
                return slot
        raise ConfigurationError(f"parameter has no traced dim {dim}")


def _mark_removed(selections: Sequence[Tuple[Atom, torch.Tensor]]) -> None:
    """Record that these atom elements (current coordinates) are gone."""
    for atom, elems in selections:
        alive = atom.alive.clone() if atom.alive is not None else torch.ones(atom.size, dtype=torch.bool)
        live = torch.nonzero(alive).reshape(-1)
        alive[live[elems]] = False
        atom.alive = alive


def _is_builtin(handler: Any) -> bool:
    return type(handler).__module__.startswith("pruning_core.")


def _module_fn(kind: str) -> Callable:
    from ..builtin.handlers.linear import prune_linear_handler

    return prune_linear_handler.prune_in_channels if kind == "in" else prune_linear_handler.prune_out_channels


def _param_fn(dim: int) -> Callable:
    from ..builtin.handlers.parameter import prune_parameter_handler

    return prune_parameter_handler.prune_in_channels if dim == 1 else prune_parameter_handler.prune_out_channels
