"""``DependencyGraph``: trace a model once, then hand out and prune groups of coupled channels."""

from __future__ import annotations

import collections
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .. import _plugins
from .._gc import without_gc
from ..errors import (ConfigurationError, EmptyLayerError, GraphError, NoHandlerError, PruningWarning,
                      PruneFailedError, PruningError, TracingError, UnsupportedModelError)
from . import handlers as hv
from .dims import FROZEN, UNLOCKED, Atom, Cat, DimError, atom_offsets, coords, current_size, leaves, resolve
from .group import Group, slot_handler
from .rules import pointwise
from .slots import Slot
from .trace import Recorder, UnsupportedOp, run_trace
from ..serialization.record import ensure_record, note_attr_changes, note_removed, plain_attrs
from .transaction import ModuleSnapshot

DEFAULT_ROOT_TYPES: Tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.rnn.RNNBase)


def check_model(model: Any) -> nn.Module:
    """Refuse models the tracer cannot prune in place, with the unwrap instruction."""
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise UnsupportedModelError(
            f"model is wrapped in {type(model).__name__}; prune the inner module instead: "
            "pass model.module, then wrap the pruned model again")
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise UnsupportedModelError(
            "model was compiled with torch.compile; prune the original module (model._orig_mod), "
            "then call torch.compile on the pruned model")
    return model


class _Index:
    """Lookups derived from the trace; rebuilt whenever atoms are refined."""

    def __init__(self, recorder: Recorder) -> None:
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
        self.coords_cache: Dict[Tuple[int, int], Tuple[Tuple[Any, ...], torch.Tensor]] = {}
        self.producer: Dict[int, int] = {}
        self.consumers: Dict[int, List[int]] = collections.defaultdict(list)
        for index, node in enumerate(recorder.nodes):
            for serial in node.outputs:
                self.producer.setdefault(serial, index)
            for serial in node.inputs:
                self.consumers[serial].append(index)


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
        self._recorder: Optional[Recorder] = None
        self._index_cache: Optional[_Index] = None
        self._customized: Dict[type, Any] = {}
        self._hub: Optional[_plugins.PluginHub] = None
        self._module_names: Dict[int, str] = {}
        self._shared_params: List[List[Tuple[nn.Module, str]]] = []
        self.history: List[Dict[str, Any]] = []
        self._example_inputs: Any = None
        self._shapes_on_meta = False
        self._forward: Optional[Callable[[nn.Module, Any], Any]] = None
        self._validate = True
        self._checked_atoms: Set[Atom] = set()
        self._trials: Optional[Any] = None
        self.head_atoms: Set[Atom] = set()

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
        model = check_model(model)
        if example_inputs is None and example_kwargs is None:
            raise ConfigurationError("build_dependency needs example_inputs (a tensor, tuple or dict of inputs)")
        self.model = model
        self._hub = _plugins.get_hub()
        self._customized = dict(customized_pruners or {})
        for cls, handler in self._customized.items():
            if not isinstance(cls, type):
                raise ConfigurationError(f"customized_pruners keys must be layer classes, got {cls!r}")
            missing = [m for m in ("prune_out_channels", "prune_in_channels", "get_out_channels",
                                   "get_in_channels") if not callable(getattr(handler, m, None))]
            if missing:
                raise ConfigurationError(f"customized_pruners[{cls.__name__}] lacks {', '.join(missing)}")
        self._check_inputs(model, example_inputs)
        inputs = example_inputs
        if example_kwargs:
            if example_inputs is None:
                inputs = dict(example_kwargs)
            else:
                positional = example_inputs if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
                user_fn = forward_fn
                inputs = (tuple(positional), dict(example_kwargs))
                forward_fn = user_fn or (lambda m, x: m(*x[0], **x[1]))
        recorder = self._trace(model, inputs, forward_fn, output_transform)
        self._recorder = recorder
        self._module_names = dict(recorder.module_names)
        self._lookup = dict(model.named_modules())
        self._example_inputs = inputs
        self._forward = _make_forward(forward_fn, output_transform)
        self._validate = validate
        self._checked_atoms = set()
        self._trials = None
        self._link_shared_parameters(model, recorder)
        self._freeze_unlinked(recorder)
        self._index_cache = None
        self._warn_about_modules_that_did_not_run(model, recorder)
        return self

    def _warn_about_modules_that_did_not_run(self, model: nn.Module, recorder: Recorder) -> None:
        """Layers the traced forward never reached (GoogLeNet's training-only auxiliary heads) are not
        pruned: if they read pruned channels, they fail when they do run. Say so now, not at train time."""
        used = {id(slot.target.owner) for slot in recorder.slots if slot.is_param}
        missed = [name for name, module in model.named_modules()
                  if any(True for _ in module.parameters(recurse=False)) and id(module) not in recorder.module_slots
                  and id(module) not in used]
        if missed:
            shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            warnings.warn(
                f"{len(missed)} layer(s) with parameters did not run in the traced forward: {shown}. They are "
                "not pruned, and they fail if they run later and read pruned channels (auxiliary heads that run "
                "only in training mode). Remove them before pruning, or trace with inputs and a mode that runs them.",
                PruningWarning, stacklevel=3)

    def _trace(self, model: nn.Module, inputs: Any, forward_fn: Optional[Callable], output_transform: Optional[Callable]
               ) -> Recorder:
        """Trace on meta twins of the weights (shapes only, no arithmetic); on real tensors if that fails."""
        from .meta import to_meta, weights_on_meta

        self._shapes_on_meta = False
        try:
            with weights_on_meta(model):
                recorder = Recorder(model, self._resolve_handler, self._rule_for, pointwise)
                run_trace(model, recorder, to_meta(inputs), forward_fn, output_transform, on_meta=True)
            self._shapes_on_meta = True
            return recorder
        except PruningError:
            raise
        except Exception:
            pass  # value-dependent forward (.item(), data-dependent shapes): trace with real tensors
        recorder = Recorder(model, self._resolve_handler, self._rule_for, pointwise)
        try:
            run_trace(model, recorder, inputs, forward_fn, output_transform)
        except PruningError:
            raise
        except Exception as exc:
            where = recorder.error_scope or recorder.current_scope
            raise TracingError(
                f"the forward pass failed while tracing{f' in {where}' if where else ''}: "
                f"{type(exc).__name__}: {exc}. Check example_inputs, or pass forward_fn(model, inputs)") from exc
        return recorder

    def _check_inputs(self, model: nn.Module, example_inputs: Any) -> None:
        """Inputs on another device or in another float type than the weights are a user error."""
        from .trace import iter_tensors

        params = [p for p in model.parameters() if p.is_floating_point()]
        if not params:
            return
        reference = params[0]
        dtypes = {p.dtype for p in params}
        for index, tensor in enumerate(iter_tensors(example_inputs)):
            if tensor.device.type != reference.device.type and "meta" not in (tensor.device.type,
                                                                               reference.device.type):
                raise ConfigurationError(
                    f"example input {index} is on {tensor.device} but the model is on {reference.device}; "
                    "move the inputs (or the model) to the same device")
            if tensor.is_floating_point() and len(dtypes) == 1 and tensor.dtype != reference.dtype:
                raise ConfigurationError(
                    f"example input {index} is {tensor.dtype} but the model's weights are {reference.dtype}; "
                    f"convert the inputs with .to({reference.dtype})")

    def _resolve_handler(self, module: nn.Module) -> Any:
        for cls in type(module).__mro__:
            if cls in self._customized:
                return hv.specialize(self._customized[cls], module)
        spec = self._hub.handlers().lookup(type(module))
        return hv.specialize(spec.handler, module) if spec is not None else None

    def _rule_for(self, func: Any) -> Optional[Callable]:
        cache = self.__dict__.setdefault("_rule_cache", {})
        if func in cache:
            return cache[func]
        rules = self._hub.op_rules()
        name = func._schema.name
        spec = rules.get(f"{name}.{func._overloadname}") or rules.get(name)
        cache[func] = spec.rule if spec is not None else None
        return cache[func]

    def _link_shared_parameters(self, model: nn.Module, recorder: Recorder) -> None:
        """Tied weights: the slots that index the same tensor dim are one channel space."""
        owners: Dict[int, List[Tuple[nn.Module, str]]] = collections.defaultdict(list)
        for module in model.modules():
            for attr, param in module.named_parameters(recurse=False):
                owners[id(param)].append((module, attr))
        self._shared_params = [group for group in owners.values() if len(group) > 1]
        if not self._shared_params:
            return
        index: Dict[Tuple[int, int], List[Slot]] = collections.defaultdict(list)
        for slots in recorder.module_slots.values():
            for slot in slots:
                for tensor, dim, to_channels in hv.channel_params(slot.handler, slot.target.owner, slot.kind):
                    if id(tensor) in owners and len(owners[id(tensor)]) > 1:
                        if to_channels is None:
                            index[(id(tensor), dim)].append(slot)
                        else:
                            recorder.space.freeze(slot.expr, f"{slot.describe()} shares a tensor in a regrouped layout")
        for slots in index.values():
            for other in slots[1:]:
                try:
                    recorder.space.unify(slots[0].expr, other.expr)
                except Exception:
                    recorder.space.freeze(slots[0].expr, "tied weights with different shapes")
                    recorder.space.freeze(other.expr, "tied weights with different shapes")

    def _freeze_unlinked(self, recorder: Recorder) -> None:
        for slot in recorder.slots:
            if not slot.linked:
                recorder.space.freeze(slot.expr, f"{slot.describe()} ({slot.kind}) is not connected to any traced tensor")

    # -- lookups ------------------------------------------------------------------
    @property
    def _index(self) -> _Index:
        if self._recorder is None:
            raise GraphError("call build_dependency(model, example_inputs) first")
        if self._index_cache is None:
            self._index_cache = _Index(self._recorder)
        return self._index_cache

    @property
    def unsupported_ops(self) -> List[UnsupportedOp]:
        """Operators without a rule (their dimensions were frozen), with where they ran."""
        return list(self._recorder.unsupported) if self._recorder else []

    def module_slots(self, module: nn.Module) -> Tuple[Slot, Slot]:
        """The (input, output) slots of a handled module that ran during tracing."""
        recorder = self._recorder
        if recorder is None:
            raise GraphError("call build_dependency(model, example_inputs) first")
        found = recorder.module_slots.get(id(module))
        if found is not None:
            return found
        name = self._module_names.get(id(module))
        if name is None:
            raise ConfigurationError(f"{type(module).__name__} is not part of the traced model")
        if id(module) not in recorder.handlers and self._resolve_handler(module) is None:
            raise self.no_handler_error(module, name)
        raise GraphError(f"{name} ({type(module).__name__}) was not called as a module during tracing (its forward "
                         "did not run, though its parameters may have been used directly), so it has no channels "
                         "of its own to prune")

    def ran_as_module(self, module: nn.Module) -> bool:
        """Whether ``module``'s forward ran during tracing (not only its parameters used by other code)."""
        return self._recorder is not None and id(module) in self._recorder.module_slots

    def _channel_slot(self, module: nn.Module, side: str) -> Slot:
        """The slot holding a layer's channels on ``side``: its module slot, or, when code applied its
        weight directly (``F.linear(x, qkv.weight)``), the weight's dim (0 for out, 1 for in)."""
        if self._recorder is not None and not self.ran_as_module(module):
            dim = 0 if side == "out" else 1
            for slot in self._recorder.slots:
                if slot.is_param and slot.dim == dim and slot.target.owner is module and slot.target.attr == "weight":
                    return slot
        in_slot, out_slot = self.module_slots(module)
        return out_slot if side == "out" else in_slot

    def has_channels(self, module: nn.Module, side: str = "out") -> bool:
        """Whether tracing saw ``module``'s channels on ``side``: it ran, or its weight was used directly."""
        try:
            self._channel_slot(module, side)
        except (GraphError, ConfigurationError, NoHandlerError):
            return False
        return True

    def no_handler_error(self, module: nn.Module, name: Optional[str] = None) -> NoHandlerError:
        name = name or self._module_names.get(id(module), type(module).__name__)
        hint = self._hub.missing_handler_hint(module) if self._hub else None
        return NoHandlerError(
            f"no handler for {name} ({type(module).__name__}). " +
            (hint + ". " if hint else "") +
            "Register one with a plugin (hook register_layer_handlers) or pass "
            f"customized_pruners={{{type(module).__name__}: handler}}")

    def get_pruner_of_module(self, module: nn.Module) -> Any:
        return self._resolve_handler(module) if self._hub else None

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

    def _slot_for(self, target: Any, pruning_fn: Callable) -> Slot:
        if self.is_out_channel_pruning_fn(pruning_fn):
            side = "out"
        elif self.is_in_channel_pruning_fn(pruning_fn):
            side = "in"
        else:
            raise ConfigurationError(
                f"pruning_fn must be a prune_out_channels/prune_in_channels function, got {pruning_fn!r}")
        if isinstance(target, torch.Tensor):
            slots = self._recorder.param_slots.get(id(target)) if self._recorder else None
            if not slots:
                raise ConfigurationError("this tensor is not a parameter used during tracing")
            dim = 0 if side == "out" else 1
            for slot in slots:
                if slot.dim == dim:
                    return slot
            raise ConfigurationError(f"parameter has no prunable dim {dim}")
        if not isinstance(target, nn.Module):
            raise ConfigurationError(f"expected a module or parameter, got {type(target).__name__}")
        in_slot, out_slot = self.module_slots(target)
        if side == "in" and hv.is_coupled(in_slot.handler):
            return out_slot
        return out_slot if side == "out" else in_slot

    def channel_structure(self, name: str, side: str = "out") -> List[int]:
        """Current sizes of the product factors of a layer's channels, outermost first.

        For a projection viewed as heads this is ``[heads, head_size]`` (or
        ``[kv_heads, queries_per_kv, head_size]`` with grouped-query attention, or
        ``[3, heads, head_size]`` for a fused qkv); a plain layer gives ``[channels]``.
        """
        module = self._lookup.get(name)
        if module is None:
            raise ConfigurationError(f"no module named {name!r} in the traced model")
        expr = self._index.slot_exprs[self._channel_slot(module, side).serial]
        if type(expr) is Cat:  # q, k and v joined by a concatenated bias: report them like a fused [3, ...]
            shapes = [self._factor_sizes(part) for part in expr.parts]
            if all(shape == shapes[0] for shape in shapes):
                return [len(shapes)] + shapes[0]
        return self._factor_sizes(expr)

    @staticmethod
    def _factor_sizes(expr: Any) -> List[int]:
        from .dims import Prod

        expr = resolve(expr)
        factors = expr.factors if type(expr) is Prod else (expr,)
        return [current_size(f) for f in factors]

    # -- structure hints ------------------------------------------------------------
    def set_channel_structure(self, module: nn.Module, groups: int, side: str = "out",
                              prunable_groups: bool = False, prunable_within: bool = True,
                              group_size: Optional[int] = None) -> bool:
        """Declare that a module's channels on ``side`` are ``groups`` equal blocks (heads).

        Whole blocks become prunable if ``prunable_groups``; positions inside
        the blocks (the same in every block) if ``prunable_within``. When the
        channels are equal parts joined by a concatenation (q, k and v), the
        blocks are declared in each part. Returns whether the structure could
        be applied.
        """
        slot = self._channel_slot(module, side)
        space = self._recorder.space
        expr = resolve(slot.expr)
        found = _find_group_factor(expr, groups, group_size)
        pairs = [found] if found is not None else []
        if not pairs and type(expr) is Cat and len({current_size(part) for part in expr.parts}) == 1:
            # Equal parts joined (q, k and v by a concatenated bias): the heads are in each part.
            parts = [_find_group_factor(resolve(part), groups, group_size) for part in expr.parts]
            pairs = parts if all(p is not None for p in parts) else []
        if not pairs:
            try:
                atoms = leaves(expr)
                if len(atoms) != 1:
                    return False
                pairs = [space.split_factor(atoms[0], groups)]
            except DimError:
                return False
        # What a structure keeps is frozen, so that a later, coarser structure on the same channels (a
        # block split in two halves, around heads) cannot unlock it again.
        for group_atom, inner in pairs:
            if prunable_groups:
                space.mark(group_atom, UNLOCKED)
                self.head_atoms.update(leaves(group_atom))
            else:
                space.mark(group_atom, FROZEN, f"{slot.describe()}: whole heads are kept")
            if prunable_within:
                space.mark(inner, UNLOCKED)
            else:
                space.mark(inner, FROZEN, f"{slot.describe()}: head dims are kept")
        self._index_cache = None
        return True

    def protect(self, targets: Iterable[Any], reason: str = "ignored by the user") -> None:
        """Never prune the output channels of these modules (or the dims of these parameters)."""
        for target in targets:
            for slot in self._protected_slots(target):
                self._recorder.space.mark(slot.expr, FROZEN, reason)
        self._index_cache = None

    def _protected_slots(self, target: Any) -> List[Slot]:
        recorder = self._recorder
        if isinstance(target, torch.Tensor):
            return list(recorder.param_slots.get(id(target), []))
        slots = recorder.module_slots.get(id(target))
        if slots:
            return [slots[1]]
        if isinstance(target, nn.Module) and self.has_channels(target):  # its weight was used directly
            return [self._channel_slot(target, "out")]
        return []

    # -- groups -----------------------------------------------------------------------
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

    # -- pruning ----------------------------------------------------------------------
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
        from .trace import EvalWhereHandlersAsk, ShapeOnlyForwards
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

    # -- reporting ----------------------------------------------------------------------
    def frozen_reasons(self) -> Dict[str, List[str]]:
        """For each module slot with fixed channels, why they are fixed (for ``inspect``)."""
        out: Dict[str, List[str]] = {}
        for slot in self._recorder.slots:
            notes: List[str] = []
            for atom in self._index.slot_atoms.get(slot.serial, []):
                if not atom.prunable:
                    notes.extend(n for n in atom.notes if n not in notes)
            if notes:
                out[f"{slot.describe()} [{slot.kind}]"] = notes
        return out


def _mark_removed(selections: Sequence[Tuple[Atom, torch.Tensor]]) -> None:
    """Record that these atom elements (current coordinates) are gone."""
    for atom, elems in selections:
        alive = atom.alive.clone() if atom.alive is not None else torch.ones(atom.size, dtype=torch.bool)
        live = torch.nonzero(alive).reshape(-1)
        alive[live[elems]] = False
        atom.alive = alive


def _module_fn(kind: str) -> Callable:
    from ..builtin.handlers.linear import prune_linear_handler

    return prune_linear_handler.prune_in_channels if kind == "in" else prune_linear_handler.prune_out_channels


def _param_fn(dim: int) -> Callable:
    from ..builtin.handlers.parameter import prune_parameter_handler

    return prune_parameter_handler.prune_in_channels if dim == 1 else prune_parameter_handler.prune_out_channels


def _repeated_in_product(expr: Any) -> Set[Atom]:
    """Atoms that occur in two factors of one product (ambiguous coordinates)."""
    from .dims import Cat, Prod

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


def _make_forward(forward_fn: Optional[Callable[[nn.Module, Any], Any]],
                  output_transform: Optional[Callable[[Any], Any]]) -> Callable[[nn.Module, Any], Any]:
    def forward(model: nn.Module, inputs: Any) -> Any:
        if forward_fn is not None:
            output = forward_fn(model, inputs)
        elif isinstance(inputs, dict):
            output = model(**inputs)
        elif isinstance(inputs, (list, tuple)):
            output = model(*inputs)
        else:
            output = model(inputs)
        return output_transform(output) if output_transform is not None else output
    return forward


def _find_group_factor(expr: Any, groups: int, group_size: Optional[int]) -> Optional[Tuple[Any, Any]]:
    """In a product expression, a run of factors whose sizes multiply to ``groups``, and what follows it.

    With grouped-query attention the heads of a query projection are two
    factors (key/value heads times queries per key/value head).
    """
    from .dims import Prod

    if type(expr) is not Prod:
        return None
    factors = expr.factors
    for start in range(len(factors)):
        product = 1
        for stop in range(start, len(factors)):
            product *= factors[stop].size
            if product == groups:
                inner = resolve(Prod(factors[stop + 1:]))
                if group_size is None or inner.size == group_size:
                    return resolve(Prod(factors[start:stop + 1])), inner
            if product > groups:
                break
    return None


def _is_builtin(handler: Any) -> bool:
    return type(handler).__module__.startswith("pruning_core.")


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
