"""``DependencyGraph``: trace a model once, then hand out and prune groups of coupled channels.

The class is a facade over small collaborators, each in its own module:
:mod:`~.build` (tracing), :mod:`~.index` (channel index arithmetic), :mod:`~.lookup`
(layer to slot), :mod:`~.grouping` (enumerating groups), :mod:`~.structure` (heads and
protection), :mod:`~.removal` (pruning), :mod:`~.transaction` (undo) and
:mod:`~.validate` (trial and verification forwards).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from torch import nn

from .._gc import without_gc
from ..errors import ConfigurationError, GraphError
from .build import TracedModel, check_model, trace_model
from .dims import Atom
from .group import Group
from .grouping import DEFAULT_ROOTS, GroupFinder
from .index import ChannelIndex, Selection
from .lookup import SlotLookup
from .removal import ChannelRemover
from .slots import Slot
from .structure import ChannelStructure
from .trace import UnsupportedOp
from .transaction import Transaction, TransactionStack

__all__ = ["DependencyGraph", "check_model", "DEFAULT_ROOTS"]


class DependencyGraph:
    """Traces a model and groups its coupled channels (the DepGraph algorithm).

    Typical use, as in the Torch-Pruning API::

        DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 224, 224))
        group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
        if DG.check_pruning_group(group):
            group.prune()
    """

    def __init__(self) -> None:
        self.model: Optional[nn.Module] = None
        self.history: List[Dict[str, Any]] = []
        self.transactions = TransactionStack()
        self._customized: Dict[type, Any] = {}
        self._traced: Optional[TracedModel] = None
        self._index: Optional[ChannelIndex] = None

    # -- building -----------------------------------------------------------------
    @without_gc
    def build_dependency(self, model: nn.Module, example_inputs: Any = None,
                         forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                         output_transform: Optional[Callable[[Any], Any]] = None,
                         unwrapped_parameters: Optional[Sequence[Any]] = None,
                         customized_pruners: Optional[Dict[type, Any]] = None,
                         ignored_params: Optional[Sequence[Any]] = None,
                         example_kwargs: Optional[Dict[str, Any]] = None,
                         verbose: bool = True, validate: bool = True) -> "DependencyGraph":
        """Trace ``model`` on ``example_inputs`` and record how its channels are coupled.

        :param example_inputs: a tensor, a tuple/list of positional inputs, or a
            dict of keyword inputs (Hugging Face style). Real or ``meta`` tensors.
        :param forward_fn: ``forward_fn(model, example_inputs)`` runs the model;
            defaults to calling it with the inputs unpacked.
        :param output_transform: applied to the output before it is recorded.
        :param unwrapped_parameters: accepted for compatibility; parameters used
            directly in ``forward`` are found automatically.
        :param customized_pruners: ``{LayerClass: handler}``, taking precedence over plugins.
        :param example_kwargs: extra keyword inputs, when ``example_inputs`` are positional.
        :param validate: before handing out groups, check on a weightless copy
            that removing a channel of each keeps the model runnable (see
            :mod:`pruning_core.graph.validate`); groups that fail are frozen.
        """
        customized = {**self._customized, **dict(customized_pruners or {})}
        traced = trace_model(model, example_inputs, forward_fn, output_transform, customized, example_kwargs)
        self.model, self._traced = traced.model, traced
        self._index = None
        self.slots = SlotLookup(traced)
        self.structure = ChannelStructure(traced, lambda: self.index, self.slots, self._invalidate_index)
        self.remover = ChannelRemover(traced, lambda: self.index, self.transactions, self.history, self)
        self.finder = GroupFinder(traced, lambda: self.index, self.slots, self.make_group, self.remover, validate)
        return self

    def register_customized_layer(self, layer_type: type, layer_pruner: Any) -> None:
        """Use ``layer_pruner`` for layers of ``layer_type`` (call before ``build_dependency``)."""
        if self._traced is not None:
            raise ConfigurationError("register_customized_layer must be called before build_dependency")
        self._customized[layer_type] = layer_pruner

    # -- collaborators' shared state --------------------------------------------------
    @property
    def traced(self) -> TracedModel:
        if self._traced is None:
            raise GraphError("call build_dependency(model, example_inputs) first")
        return self._traced

    @property
    def index(self) -> ChannelIndex:
        """The channel index of the current trace (rebuilt after structure changes)."""
        if self._index is None:
            self._index = ChannelIndex(self.traced.recorder)
        return self._index

    def _invalidate_index(self) -> None:
        self._index = None

    def name_of(self, module: Any) -> str:
        """The qualified name of a module of the traced model ("" for the model itself)."""
        return self.traced.name_of(module)

    @property
    def head_atoms(self) -> Set[Atom]:
        return self.structure.head_atoms

    @property
    def unsupported_ops(self) -> List[UnsupportedOp]:
        """Operators without a rule (their dimensions were frozen), with where they ran."""
        return list(self._traced.recorder.unsupported) if self._traced else []

    # -- groups -------------------------------------------------------------------------
    def make_group(self, selections: Sequence[Selection], root: Slot) -> Group:
        return Group(self.index, self.remover, selections, root)

    def get_all_groups(self, ignored_layers: Sequence[Any] = (), root_module_types: Any = DEFAULT_ROOTS,
                       validate: Optional[bool] = None) -> Iterator[Group]:
        """Yield each group of coupled channels once, rooted at a layer of ``root_module_types``.

        The default roots are the layers whose handler declares ``default_root`` (convolutions,
        linear layers and RNNs). With ``root_module_types=None`` (the pruners' default) every
        layer with a handler that is not coupled (BatchNorm-like) is a root, and so is the weight
        of a layer that code applied directly (``F.linear(x, qkv.weight)``).

        Channels of ignored layers' outputs (and ignored parameters) are never included; their
        inputs follow their producers. A group's ``idxs`` cover all its channels; call
        ``group.prune(idxs=...)`` to remove some.
        """
        check = validate if validate is not None else self.finder.validate_by_default
        return self.finder.all_groups(ignored_layers, root_module_types, check)

    def validate_groups(self, protected: Set[Atom] = frozenset()) -> Dict[Atom, str]:
        """Freeze every candidate group whose removal breaks a trial forward pass; return them with reasons."""
        return self.finder.validate(protected)

    def protected_atoms(self, ignored: Sequence[Any]) -> Set[Atom]:
        return self.finder.protected_atoms(ignored)

    def get_pruning_group(self, module: Any, pruning_fn: Callable, idxs: Sequence[int]) -> Group:
        """The group that removing channels ``idxs`` of ``module`` (via ``pruning_fn``) implies.

        Asked for explicitly, channels that reach a model output (a classifier's classes) are
        given too; pruners and ``get_all_groups`` never include them.
        """
        slot = self.slots.side_slot(module, _side_of(pruning_fn))
        return self.make_group(self.index.selections_for(slot, idxs, explicit=True), slot)

    def check_pruning_group(self, group: Group) -> bool:
        """False when the group would leave some layer with no channels, or (with validation on)
        when removing its channels breaks a trial forward pass on a weightless copy."""
        return self.finder.check(group)

    # -- structure ------------------------------------------------------------------------
    def channel_structure(self, name: str, side: str = "out") -> List[int]:
        """Current sizes of the product factors of a layer's channels, outermost first (see
        :meth:`ChannelStructure.channel_structure`)."""
        return self.structure.channel_structure(name, side)

    def channel_parts(self, name: str, side: str = "out") -> List[List[int]]:
        """:meth:`channel_structure` of each concatenated part of a layer's channels (see
        :meth:`ChannelStructure.channel_parts`)."""
        return self.structure.channel_parts(name, side)

    def set_channel_structure(self, module: nn.Module, groups: int, side: str = "out",
                              prunable_groups: bool = False, prunable_within: bool = True,
                              group_size: Optional[int] = None) -> bool:
        """Declare that a module's channels on ``side`` are ``groups`` equal blocks (heads)."""
        return self.structure.set_channel_structure(module, groups, side, prunable_groups, prunable_within,
                                                    group_size)

    def head_counts(self) -> Dict[nn.Module, int]:
        """Current head count of each module declared as heads (``num_heads``, plugin hints)."""
        return self.structure.head_counts()

    def protect(self, targets: Iterable[Any], reason: str = "ignored by the user") -> None:
        """Never prune the output channels of these modules (or the dims of these parameters)."""
        self.structure.protect(targets, reason)

    def freeze(self, atoms: Iterable[Atom], reason: str) -> None:
        """Never prune these atoms again (for example after they broke a verification pass)."""
        self.structure.freeze(atoms, reason)

    # -- layers ---------------------------------------------------------------------------
    def module_slots(self, module: nn.Module) -> Tuple[Slot, Slot]:
        """The (input, output) slots of a handled module that ran during tracing."""
        return self.slots.module_slots(module)

    def ran_as_module(self, module: nn.Module) -> bool:
        return self._traced is not None and self.slots.ran_as_module(module)

    def has_channels(self, module: nn.Module, side: str = "out") -> bool:
        """Whether tracing saw ``module``'s channels on ``side``: it ran, or its weight was used directly."""
        return self.slots.has_channels(module, side)

    def get_pruner_of_module(self, module: nn.Module) -> Any:
        return self._traced.resolver.handler_of(module) if self._traced else None

    def get_out_channels(self, module: nn.Module) -> Optional[int]:
        handler = self.get_pruner_of_module(module)
        return None if handler is None else handler.get_out_channels(module)

    def get_in_channels(self, module: nn.Module) -> Optional[int]:
        handler = self.get_pruner_of_module(module)
        return None if handler is None else handler.get_in_channels(module)

    def is_out_channel_pruning_fn(self, fn: Callable) -> bool:
        return getattr(fn, "__name__", "").endswith("out_channels")

    def is_in_channel_pruning_fn(self, fn: Callable) -> bool:
        return getattr(fn, "__name__", "").endswith("in_channels")

    # -- pruning, undo and history -----------------------------------------------------------
    def transaction(self, step: bool = False) -> "contextlib.AbstractContextManager[Transaction]":
        """``with DG.transaction():`` every change inside (modules, channel bookkeeping, history, objects
        fix-ups track) is undone if the block raises, or by calling ``rollback()`` on the transaction.

        With ``step=True`` the block is one pruning step: groups pruned inside do not notify plugins
        one by one; call :meth:`end_step` once they are all removed.
        """
        return self.transactions.open(self.traced.lookup.values(), self.traced.recorder.space.atoms, self.history,
                                      step=step)

    def end_step(self) -> None:
        """Notify plugins (``after_step``) that the current step's channels are all removed."""
        self.remover.end_step()

    def remember(self, obj: Any) -> None:
        """For fix-ups: remember ``obj``'s attributes before editing them, so an undone step restores them."""
        self.transactions.track(obj)

    def verify(self) -> Optional[str]:
        """Run the example inputs through the model; return why it failed, or None if outputs keep their shapes."""
        from .validate import verify_forward

        return verify_forward(self.traced)

    def replay(self, history: Sequence[Dict[str, Any]]) -> None:
        """Apply a recorded pruning history (``DG.history``) to this graph's model, in order.

        Use it on a freshly built copy of the unpruned model to rebuild a pruned one.
        """
        self.remover.replay(history, self.slots)

    load_pruning_history = replay

    def pruning_history(self) -> List[Dict[str, Any]]:
        """Everything removed so far, in order; JSON-friendly (give it to ``load_pruning_history``)."""
        return [dict(entry) for entry in self.history]

    def frozen_reasons(self) -> Dict[str, List[str]]:
        """For each module slot with fixed channels, why they are fixed (for ``inspect``)."""
        return self.structure.frozen_reasons()


def _side_of(pruning_fn: Callable) -> str:
    name = getattr(pruning_fn, "__name__", "")
    if name.endswith("out_channels"):
        return "out"
    if name.endswith("in_channels"):
        return "in"
    raise ConfigurationError(f"pruning_fn must be a prune_out_channels/prune_in_channels function, got {pruning_fn!r}")
