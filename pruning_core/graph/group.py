"""Pruning groups: the coupled channels that must be removed together.

A group is a selection of elements of one or more leaf atoms. Each slot that
contains a selected atom becomes a :class:`Dependency`; iterating a group gives
``(dep, idxs)`` pairs, where ``idxs`` are the slot positions to remove.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..errors import GraphError, InvalidIndicesError, UnsupportedModelError
from .dims import Atom
from .slots import Slot

if TYPE_CHECKING:  # pragma: no cover
    from .index import ChannelIndex
    from .removal import ChannelRemover


def _describe(slot: Slot) -> str:
    if slot.is_param:
        tensor = slot.target.module
        kind = "Parameter" if slot.kind == "param" else "Buffer"
        return f"{slot.target.qualname} ({kind} of shape {tuple(tensor.shape)}, dim {slot.dim})"
    module = slot.target.module
    text = repr(module)
    if "\n" in text:
        text = f"{type(module).__name__}(...)"
    return f"{slot.target.qualname} ({text})"


def slot_handler(slot: Slot) -> Any:
    """The pruning function shown for a slot: ``handler.prune_out_channels`` and friends.

    A raw tensor's slot shows the handler registered for its tensor type (the built-in
    parameter pruner), dim 0 as "out" and other dims as "in".
    """
    if slot.handler is None:
        return None
    if slot.is_param:
        return slot.handler.prune_out_channels if slot.dim == 0 else slot.handler.prune_in_channels
    return slot.handler.prune_out_channels if slot.kind == "out" else slot.handler.prune_in_channels


def _function_name(fn: Any) -> str:
    return getattr(fn, "__name__", "prune")


class Dependency:
    """``handler`` prunes ``target``; it is triggered by pruning ``source`` with ``trigger``."""

    def __init__(self, slot: Slot, source: Slot) -> None:
        self.slot = slot
        self.source_slot = source

    @property
    def target(self) -> Any:
        return self.slot.target

    @property
    def source(self) -> Any:
        return self.source_slot.target

    @property
    def handler(self) -> Any:
        return slot_handler(self.slot)

    @property
    def trigger(self) -> Any:
        return slot_handler(self.source_slot)

    @property
    def layer(self) -> Any:
        return self.slot.target.module

    @property
    def pruning_dim(self) -> int:
        return self.slot.dim

    def is_triggered_by_pruning(self) -> bool:
        return self.slot is not self.source_slot

    def __repr__(self) -> str:
        return (f"{_function_name(self.trigger)} on {_describe(self.source_slot)} => "
                f"{_function_name(self.handler)} on {_describe(self.slot)}")


class GroupItem(NamedTuple):
    """One member of a group: unpack as ``dep, idxs``."""

    dep: Dependency
    idxs: List[int]


class Group:
    """Coupled channels of several layers; ``prune()`` removes them everywhere at once.

    :param index: the graph's :class:`~pruning_core.graph.index.ChannelIndex`, which maps
        the group's channels to positions in each member.
    :param remover: what removes channels from the model (``prune``).
    :param selections: ``(atom, elements)`` pairs: the coupled channels of the group.
    :param root: the slot the group is rooted at (the layer it was asked for).
    """

    def __init__(self, index: "ChannelIndex", remover: Optional["ChannelRemover"],
                 selections: Sequence[Tuple[Atom, torch.Tensor]], root: Slot) -> None:
        self.index = index
        self.remover = remover
        self.selections = [(atom, elems) for atom, elems in selections]
        self.root_slot = root
        self._items: Optional[List[GroupItem]] = None
        self._positions: Optional[Dict[int, torch.Tensor]] = None
        self._states = [atom.alive for atom, _ in self.selections]  # identity changes when an atom is pruned
        self.check_failure: Optional[str] = None

    # -- members ------------------------------------------------------------------
    @property
    def atoms(self) -> List[Atom]:
        return [atom for atom, _ in self.selections]

    def positions(self) -> Dict[int, torch.Tensor]:
        """Slot serial -> sorted positions to remove there (current coordinates)."""
        if self._positions is None:
            self._positions = self.index.positions_for(self.selections)
        return self._positions

    @property
    def items(self) -> List[GroupItem]:
        if self._items is None:
            positions = self.positions()
            order = self.index.member_order(self.root_slot, self.atoms, set(positions))
            self._items = [GroupItem(Dependency(slot, source), positions[slot.serial].tolist())
                           for slot, source in order]
        return self._items

    def __iter__(self) -> Iterator[GroupItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> GroupItem:
        return self.items[index]

    @property
    def num_channels(self) -> int:
        """How many independent channels (units) the group holds; ``channel_group`` picks among them."""
        return sum(int(elems.numel()) for _, elems in self.selections)

    def channel_group(self, channels: Sequence[int]) -> "Group":
        """The same group restricted to some of its channels (``0 <= c < num_channels``).

        A channel here is one unit of the coupled space: with heads or a
        flattened feature map, one channel spans several positions of a layer.
        """
        wanted = sorted(set(int(c) for c in channels))
        if wanted and (wanted[0] < 0 or wanted[-1] >= self.num_channels):
            raise InvalidIndicesError(f"channel indices must be in 0..{self.num_channels - 1}, got {wanted}")
        chosen, offset = [], 0
        for atom, elems in self.selections:
            local = [c - offset for c in wanted if offset <= c < offset + elems.numel()]
            if local:
                chosen.append((atom, elems[torch.tensor(local, dtype=torch.long)]))
            offset += elems.numel()
        return Group(self.index, self.remover, chosen, self.root_slot)

    @property
    def root_idxs(self) -> List[int]:
        return self.positions().get(self.root_slot.serial, torch.empty(0, dtype=torch.long)).tolist()

    def has_dep(self, dep: Dependency) -> bool:
        return any(item.dep.slot is dep.slot for item in self.items)

    def has_pruning_op(self, dep: Dependency, idxs: Sequence[int]) -> bool:
        return any(item.dep.slot is dep.slot and set(idxs) <= set(item.idxs) for item in self.items)

    # -- actions ------------------------------------------------------------------------
    def prune(self, idxs: Optional[Sequence[int]] = None) -> None:
        """Remove the group's channels, or ``idxs`` of the root layer and everything coupled to them.

        All-or-nothing: if any handler or hook fails, every module is restored
        and :class:`pruning_core.PruneFailedError` names the one that failed.
        """
        if idxs is None and any(atom.alive is not state for (atom, _), state in zip(self.selections, self._states)):
            raise GraphError("these channels were pruned since this group was made; get a fresh group "
                             "(handle groups one at a time, do not keep them in a list)")
        if self.remover is None:
            raise GraphError("this group was made for scoring only; get it from a DependencyGraph to prune it")
        selections = self.selections if idxs is None else \
            self.index.selections_for(self.root_slot, idxs, explicit=True)
        self.remover.prune(selections, self.root_slot)

    def exec(self) -> None:
        """Torch-Pruning's old name for :meth:`prune`; warns, as Torch-Pruning does."""
        warnings.warn("Group.exec() is Torch-Pruning's old name for Group.prune(); call prune()",
                      DeprecationWarning, stacklevel=2)
        self.prune()

    def soft_prune(self, idxs: Optional[Sequence[int]] = None) -> None:
        """Zero the parameters of the group's channels instead of removing them.

        The model keeps its shapes; the zeroed channels contribute nothing
        through the layers that own them.
        """
        from .channels import slot_params, zero_positions

        selections = self.selections if idxs is None else \
            self.index.selections_for(self.root_slot, idxs, explicit=True)
        work = []
        for serial, positions in self.index.positions_for(selections).items():
            slot = self.index.slot(serial)
            stored = {id(t) for t in list(slot.target.owner.parameters()) + list(slot.target.owner.buffers())}
            for tensor, dim, to_channels in slot_params(slot):
                if id(tensor) not in stored:  # checked before anything is zeroed: all or nothing
                    raise UnsupportedModelError(
                        f"soft_prune cannot zero channels of {slot.describe()}: its weight is computed on each access "
                        "(a parametrization such as weight_norm), so zeroing it would change nothing. Remove the "
                        "parametrization first (torch.nn.utils.parametrize.remove_parametrizations), or prune().")
                work.append((tensor, dim, to_channels, positions))
        for tensor, dim, to_channels, positions in work:
            zero_positions(tensor, dim, to_channels, positions)

    def __str__(self) -> str:
        lines = ["-" * 32, "          Pruning Group", "-" * 32]
        for index, (dep, idxs) in enumerate(self.items):
            if len(idxs) <= 32:
                shown = str(idxs)
            else:
                shown = f"[{', '.join(map(str, idxs[:16]))}, ..., {idxs[-1]}] ({len(idxs)} channels)"
            suffix = " (Pruning Root)" if index == 0 else ""
            lines.append(f"[{index}] {dep!r}, idxs={shown}{suffix}")
        lines.append("-" * 32)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Group root={self.root_slot.describe()} channels={sum(e.numel() for _, e in self.selections)} " \
               f"members={len(self.positions())}>"

    def details(self) -> str:
        return str(self)
