"""``DependencyGraph``: trace a model once, then hand out and prune groups of coupled channels."""

from __future__ import annotations

import collections
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .. import _plugins
from .._gc import without_gc
from ..errors import (ConfigurationError, GraphError, NoHandlerError, PruningError, PruningWarning, TracingError,
                      UnsupportedModelError)
from . import handlers as hv
from .dims import FROZEN, Atom, leaves, resolve
from .grouping import GroupingMixin
from .pruning import PruningMixin
from .rules import pointwise
from .slots import Slot
from .structure import ChannelStructureMixin
from .capture import run_trace
from .trace import Recorder, UnsupportedOp



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


class DependencyGraph(GroupingMixin, ChannelStructureMixin, PruningMixin):
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
