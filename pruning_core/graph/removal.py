"""Removing channels: run the handlers of every group member, then the fix-ups, inside a transaction.

The same code prunes the real model (:meth:`ChannelRemover.prune`, which also writes the
pruning record and the history) and the throwaway copies that trial forwards use
(:meth:`ChannelRemover.apply_to_copy`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigurationError, EmptyLayerError, GraphError, PruneFailedError
from ..layer_handler import SortedIndices, keep_indices, prune_tensor
from . import handlers as hv
from .build import TracedModel
from .index import ChannelIndex, Selection, mark_removed
from .lookup import SlotLookup
from .record import ensure_record, note_attr_changes, note_removed, plain_attrs
from .slots import Slot
from .transaction import TransactionStack, snapshot_deep


def with_ancestors(lookup: Dict[str, nn.Module], named: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """``named`` plus every ancestor module of each (by qualified name)."""
    out: Dict[str, nn.Module] = {}
    for name in list(named):
        parts = name.split(".") if name else []
        for depth in range(len(parts), -1, -1):
            prefix = ".".join(parts[:depth])
            if prefix in lookup:
                out.setdefault(prefix, lookup[prefix])
    out.update(named)
    return out


class ChannelRemover:
    """Applies selections of channels to a model: handlers, tied weights, fix-up hooks, records, history."""

    def __init__(self, traced: TracedModel, index: Callable[[], ChannelIndex], transactions: TransactionStack,
                 history: List[Dict[str, Any]], graph: Any) -> None:
        self.traced = traced
        self._index = index
        self.transactions = transactions
        self.history = history
        self.graph = graph  # handed to fix-up hooks (they read channel_structure)

    # -- the real model ------------------------------------------------------------------
    def prune(self, selections: Sequence[Selection], root: Optional[Slot] = None) -> None:
        """Remove the selected channels everywhere they occur; all or nothing."""
        if not selections:
            return
        index = self._index()
        positions = index.positions_for(selections)
        for serial, pos in positions.items():
            if pos.numel() >= index.size(index.slot(serial)):
                raise EmptyLayerError(
                    f"pruning would remove all {pos.numel()} channels of {index.slot(serial).describe()}; "
                    "keep at least one (check DG.check_pruning_group(group) first)")
        traced = self.traced
        members = [index.slot(s) for s in positions]
        named = {traced.name_of(slot.target.owner): slot.target.owner for slot in members}
        affected = with_ancestors(traced.lookup, named)
        # Handlers may edit their layer's children (MultiheadAttention.out_proj): cover them too.
        touched = list(affected.values()) + [child for slot in members if not slot.is_param
                                             for child in slot.target.owner.modules()]
        touched += [binding.module for binding in traced.recorder.size_bindings if binding.follows_pruning]
        deep = snapshot_deep([(slot.handler, slot.target.owner) for slot in members if not slot.is_param])
        shared = [module for group in traced.shared_params for module, _ in group]
        standalone = not self.transactions.in_step  # a group pruned on its own is a step of its own
        try:
            with self.transactions.open(touched + shared, [atom for atom, _ in selections], self.history, deep,
                                        step=standalone):
                for module in touched:
                    ensure_record(module)  # remember the original state before anything changes
                attrs_before = [(module, plain_attrs(module)) for module in {id(m): m for m in touched}.values()]
                for slot in members:
                    key = f"param:{slot.target.attr}:{slot.dim}" if slot.is_param else slot.kind
                    note_removed(slot.target.owner, key, index.size(slot), positions[slot.serial])
                self._apply(traced.model, traced.lookup, members, positions, lambda slot: slot.target.owner,
                            selections)
                self._retie_shared_parameters()
                for module, before in attrs_before:
                    note_attr_changes(module, before)
                root = root if root is not None and root.serial in positions else members[0]
                self.history.append({"module": root.target.name, "attr": root.target.attr, "kind": root.kind,
                                     "dim": root.dim, "idxs": positions[root.serial].tolist()})
                if standalone:
                    self.end_step()
        except PruneFailedError:
            raise
        except Exception as exc:
            what = "tied parameters could not be kept tied" if isinstance(exc, GraphError) else \
                f"pruning failed ({type(exc).__name__})"
            raise PruneFailedError(f"{what}: {exc}. The model was restored.") from exc

    def end_step(self) -> None:
        """Tell plugins a step is complete (``after_step``), inside the step's transaction."""
        try:
            self.traced.resolver.hub.after_step(model=self.traced.model, graph=self.graph)
        except Exception as exc:
            raise PruneFailedError(f"an after_step hook failed: {type(exc).__name__}: {exc}. "
                                   "The step was undone.") from exc

    def _retie_shared_parameters(self) -> None:
        for group in self.traced.shared_params:
            tensors = [getattr(module, attr) for module, attr in group]
            if all(t is tensors[0] for t in tensors):
                continue
            if len({tuple(t.shape) for t in tensors}) > 1:
                raise GraphError("tied parameters were pruned to different shapes: " +
                                 ", ".join(f"{self.traced.name_of(m) or '?'}.{a}" for m, a in group))
            for module, attr in group:
                module._parameters[attr] = tensors[0]

    # -- real model or a copy --------------------------------------------------------------
    def apply_to_copy(self, model: nn.Module, lookup: Dict[str, nn.Module], selections: Sequence[Selection]) -> None:
        """Prune a copy of the model (same module names) the way ``selections`` would prune the model.

        The channel bookkeeping (atoms' alive masks) is updated; the caller puts it back.
        """
        index = self._index()
        positions = index.positions_for(selections)
        members = [index.slot(s) for s in positions]
        names = self.traced.module_names
        self._apply(model, lookup, members, positions, lambda slot: lookup[names.get(id(slot.target.owner), "")],
                    selections)

    def _apply(self, model: nn.Module, lookup: Dict[str, nn.Module], members: Sequence[Slot],
               positions: Dict[int, torch.Tensor], owner_of: Callable[[Slot], nn.Module],
               selections: Sequence[Selection]) -> None:
        """Run the handlers of ``members`` on ``model``, then the fix-ups.

        The channel bookkeeping is updated before the fix-ups, so they see the new sizes
        (``channel_structure``); the enclosing transaction puts it back if anything fails.
        Every handler gets the same call: the layer and the positions as a sorted list of ints.
        """
        current: Optional[Slot] = None
        try:
            for slot in members:
                current = slot
                owner = owner_of(slot)
                idxs = positions[slot.serial]
                if slot.is_param:  # a raw tensor: select along the traced dim
                    tensor = getattr(owner, slot.target.attr)
                    prune_tensor(owner, slot.target.attr, slot.dim, keep_indices(idxs, tensor.shape[slot.dim]))
                elif slot.kind == "out":
                    slot.handler.prune_out_channels(owner, SortedIndices(idxs))
                else:
                    slot.handler.prune_in_channels(owner, SortedIndices(idxs))
            current = None
            self._refresh_unhandled(members, owner_of)
            mark_removed(selections)
            self._write_size_attributes(lookup)
            names = {self.traced.name_of(slot.target.owner): owner_of(slot) for slot in members}
            self.traced.resolver.hub.fixup_after_prune(model=model, modules=with_ancestors(lookup, names),
                                                       graph=self.graph)
        except Exception as exc:
            if current is not None:
                who = "parameter pruner" if current.is_param else hv.handler_name(current.handler)
                where = f"{who} failed on {current.describe()} ({type(current.target.owner).__name__})"
            else:
                where = "a fix-up hook failed after pruning"
            raise PruneFailedError(f"{where}: {type(exc).__name__}: {exc}. The model was restored unchanged.") \
                from exc

    def _write_size_attributes(self, lookup: Dict[str, nn.Module]) -> None:
        """Declared size attributes (``SizeAttribute``) take the new size of what they were found to measure."""
        for binding in self.traced.recorder.size_bindings:
            if binding.follows_pruning:
                target = lookup.get(self.traced.name_of(binding.module))  # the model, or a trial copy
                size = binding.current_value()
                if size is None:
                    continue
                value = getattr(target, binding.attribute, None) if target is not None else None
                if binding.index is not None and isinstance(value, (list, tuple)):  # one of the split sizes
                    size = type(value)(size if i == binding.index else v for i, v in enumerate(value))
                if target is not None and value != size:
                    setattr(target, binding.attribute, size)

    def _refresh_unhandled(self, members: Sequence[Slot], owner_of: Callable[[Slot], nn.Module]) -> None:
        """Layers traced through their weights still get their size attributes updated."""
        unhandled = self.traced.recorder.unhandled
        for slot in {id(s.target.owner): s for s in members if s.is_param}.values():
            entry = unhandled.get(id(slot.target.owner))
            refresh = getattr(entry[1], "refresh_attributes", None) if entry else None
            if callable(refresh):
                refresh(owner_of(slot))

    # -- history ------------------------------------------------------------------------------
    def replay(self, history: Sequence[Dict[str, Any]], slots: SlotLookup) -> None:
        """Apply a recorded pruning history to this graph's model, in order."""
        modules = self.traced.lookup
        for number, entry in enumerate(history):
            try:
                owner = modules[entry["module"]]
                if entry.get("attr"):
                    slot = slots.param_slot(getattr(owner, entry["attr"]), entry.get("dim", 0))
                else:
                    slot = slots.side_slot(owner, "in" if entry["kind"] == "in" else "out")
                selections = self._index().selections_for(slot, entry["idxs"], trusted=True)
            except (KeyError, AttributeError, TypeError) as exc:
                raise ConfigurationError(f"pruning history entry {number} does not match this model "
                                         f"({type(exc).__name__}: {exc}): {entry!r:.200}") from None
            self.prune(selections, slot)

