"""Building a graph: check the model and inputs, trace once, link tied weights, warn about what did not run.

The product is a :class:`TracedModel`, the shared state every graph collaborator reads:
the model, the recorder of the trace, name lookups, how to run the model, and how to
find a layer's handler.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from .. import _plugins
from ..calling import call_model
from ..errors import ConfigurationError, PruningError, TracingError, UnsupportedModelError, warn
from ..records import HANDLER_METHODS
from . import handlers as hv
from .capture import run_trace
from .modes import in_training_mode, not_reached, training_mode
from .rules import pointwise
from .slots import Slot
from .trace import Recorder, iter_tensors

class HandlerResolver:
    """Finds the handler of a module: the user's ``customized_pruners`` first, then the plugins."""

    def __init__(self, hub: Any, customized: Optional[Dict[type, Any]] = None) -> None:
        self.hub = hub
        self.customized = dict(customized or {})
        for cls, handler in self.customized.items():
            if not isinstance(cls, type):
                raise ConfigurationError(f"customized_pruners keys must be layer classes, got {cls!r}")
            missing = [m for m in HANDLER_METHODS if not callable(getattr(handler, m, None))]
            if missing:
                raise ConfigurationError(f"customized_pruners[{cls.__name__}] lacks {', '.join(missing)}")
        self._rules: Dict[Any, Optional[Callable]] = {}

    def handler_of(self, module: Any) -> Any:
        for cls in type(module).__mro__:
            if cls in self.customized:
                return hv.specialize(self.customized[cls], module)
        spec = self.hub.handlers().lookup(type(module))
        return hv.specialize(spec.handler, module) if spec is not None else None

    def rule_for(self, func: Any) -> Optional[Callable]:
        if func in self._rules:
            return self._rules[func]
        rules = self.hub.op_rules()
        name = func._schema.name
        spec = rules.get(f"{name}.{func._overloadname}") or rules.get(name)
        self._rules[func] = spec.rule if spec is not None else None
        return self._rules[func]

    def missing_hint(self, module: Any) -> Optional[str]:
        return self.hub.missing_handler_hint(module)


@dataclasses.dataclass
class TracedModel:
    """A model and what one traced forward pass learned about it."""

    model: nn.Module
    recorder: Recorder
    resolver: HandlerResolver
    module_names: Dict[int, str]
    lookup: Dict[str, nn.Module]
    example_inputs: Any
    forward: Callable[[nn.Module, Any], Any]
    shapes_on_meta: bool
    shared_params: List[List[Tuple[nn.Module, str]]]

    def name_of(self, module: Any) -> str:
        return self.module_names.get(id(module), "")


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


def check_inputs(model: nn.Module, example_inputs: Any) -> None:
    """Inputs on another device or in another float type than the weights are a user error."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return
    reference = params[0]
    dtypes = {p.dtype for p in params}
    for number, tensor in enumerate(iter_tensors(example_inputs)):
        if tensor.device.type != reference.device.type and "meta" not in (tensor.device.type, reference.device.type):
            raise ConfigurationError(
                f"example input {number} is on {tensor.device} but the model is on {reference.device}; "
                "move the inputs (or the model) to the same device")
        if tensor.is_floating_point() and len(dtypes) == 1 and tensor.dtype != reference.dtype:
            raise ConfigurationError(
                f"example input {number} is {tensor.dtype} but the model's weights are {reference.dtype}; "
                f"convert the inputs with .to({reference.dtype})")


def make_forward(forward_fn: Optional[Callable[[nn.Module, Any], Any]],
                 output_transform: Optional[Callable[[Any], Any]]) -> Callable[[nn.Module, Any], Any]:
    """``forward(model, inputs)``: the user's ``forward_fn``, or a call with the inputs unpacked."""
    def forward(model: nn.Module, inputs: Any) -> Any:
        output = call_model(model, inputs, forward_fn)
        return output_transform(output) if output_transform is not None else output
    return forward


def trace_model(model: nn.Module, example_inputs: Any, forward_fn: Optional[Callable],
                output_transform: Optional[Callable], customized: Optional[Dict[type, Any]] = None,
                example_kwargs: Optional[Dict[str, Any]] = None) -> TracedModel:
    """Check, trace and link ``model``; raises a :class:`pruning_core.PruningError` subclass on bad input."""
    model = check_model(model)
    if example_inputs is None and example_kwargs is None:
        raise ConfigurationError("build_dependency needs example_inputs (a tensor, tuple or dict of inputs)")
    resolver = HandlerResolver(_plugins.get_hub(), customized)
    check_inputs(model, example_inputs)
    inputs = example_inputs
    if example_kwargs:
        if example_inputs is None:
            inputs = dict(example_kwargs)
        else:
            positional = example_inputs if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
            inputs = (tuple(positional), dict(example_kwargs))
            forward_fn = forward_fn or (lambda m, x: m(*x[0], **x[1]))
    recorder, on_meta = _trace(model, inputs, forward_fn, output_transform, resolver)
    forward = make_forward(forward_fn, output_transform)
    missed = not_reached(model, recorder)
    if missed and not model.training:  # layers that run only in training mode: trace once more in it
        try:
            with training_mode(model):
                in_train, train_on_meta = _trace(model, inputs, forward_fn, output_transform, resolver)
        except PruningError:
            in_train = None
        # only a trace that reaches everything the eval trace did, and more (stochastic depth may skip blocks)
        if in_train is not None and set(not_reached(model, in_train)) < set(missed):
            recorder, on_meta, forward = in_train, train_on_meta, in_training_mode(forward)
    traced = TracedModel(model=model, recorder=recorder, resolver=resolver,
                         module_names=dict(recorder.module_names), lookup=dict(model.named_modules()),
                         example_inputs=inputs, forward=forward, shapes_on_meta=on_meta, shared_params=[])
    traced.shared_params = _link_shared_parameters(model, recorder)
    for slot in recorder.slots:
        if not slot.linked:
            recorder.space.freeze(slot.expr, f"{slot.describe()} ({slot.kind}) is not connected to any traced tensor")
    _warn_about_modules_that_did_not_run(model, recorder)
    return traced


def _trace(model: nn.Module, inputs: Any, forward_fn: Optional[Callable], output_transform: Optional[Callable],
           resolver: HandlerResolver) -> Tuple[Recorder, bool]:
    """Trace on meta twins of the weights (shapes only, no arithmetic); on real tensors if that fails.

    Each is tried first with Python-level sizes followed (``symbolic.py``) and then, should a
    forward reject the traced ints, without.
    """
    from .meta import to_meta, weights_on_meta

    failure: Optional[Tuple[Exception, Optional[Recorder]]] = None
    declared = resolver.hub.size_attributes(model)  # SizeAttribute records: followed while tracing
    contexts = functools.partial(resolver.hub.tracing_contexts, model)  # fresh ones for each forward
    meta_refused = False
    for on_meta, symbolic in ((True, True), (True, False), (False, True), (False, False)):
        if on_meta and meta_refused:
            continue  # the forward needs values (.item() on a mask): dropping size tracking will not help
        recorder: Optional[Recorder] = None
        try:
            if on_meta:
                with weights_on_meta(model):
                    recorder = Recorder(model, resolver.handler_of, resolver.rule_for, pointwise)  # meta params
                    run_trace(model, recorder, to_meta(inputs), forward_fn, output_transform, on_meta=True,
                              symbolic=symbolic, size_attributes=declared, contexts=contexts)
            else:
                recorder = Recorder(model, resolver.handler_of, resolver.rule_for, pointwise)
                run_trace(model, recorder, inputs, forward_fn, output_transform, symbolic=symbolic,
                          size_attributes=declared, contexts=contexts)
            return recorder, on_meta
        except PruningError:
            raise
        except Exception as exc:  # value-dependent forward (.item(), data-dependent shapes): try the next way
            failure = (exc, recorder)
            meta_refused = meta_refused or (on_meta and "meta" in str(exc).lower())
    exc, recorder = failure
    where = (recorder.error_scope or recorder.current_scope) if recorder is not None else None
    raise TracingError(
        f"the forward pass failed while tracing{f' in {where}' if where else ''}: "
        f"{type(exc).__name__}: {exc}. Check example_inputs, or pass forward_fn(model, inputs)") from exc


def _link_shared_parameters(model: nn.Module, recorder: Recorder) -> List[List[Tuple[nn.Module, str]]]:
    """Tied weights: the slots that index the same tensor dim are one channel space."""
    owners: Dict[int, List[Tuple[nn.Module, str]]] = collections.defaultdict(list)
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            owners[id(param)].append((module, attr))
    shared = [group for group in owners.values() if len(group) > 1]
    if not shared:
        return shared
    by_dim: Dict[Tuple[int, int], List[Slot]] = collections.defaultdict(list)
    for slots in recorder.module_slots.values():
        for slot in slots:
            for tensor, dim, to_channels in hv.channel_params(slot.handler, slot.target.owner, slot.kind):
                if id(tensor) in owners and len(owners[id(tensor)]) > 1:
                    if to_channels is None:
                        by_dim[(id(tensor), dim)].append(slot)
                    else:
                        recorder.space.freeze(slot.expr, f"{slot.describe()} shares a tensor in a regrouped layout")
    for slots in by_dim.values():
        for other in slots[1:]:
            try:
                recorder.space.unify(slots[0].expr, other.expr)
            except Exception:
                recorder.space.freeze(slots[0].expr, "tied weights with different shapes")
                recorder.space.freeze(other.expr, "tied weights with different shapes")
    return shared


def _warn_about_modules_that_did_not_run(model: nn.Module, recorder: Recorder) -> None:
    """Layers the traced forward never reached (GoogLeNet's training-only auxiliary heads) are not
    pruned: if they read pruned channels, they fail when they do run. Say so now, not at train time."""
    missed = not_reached(model, recorder)
    if missed:
        shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        warn(f"{len(missed)} layer(s) with parameters did not run in the traced forward, in eval or training "
             f"mode: {shown}. They are not pruned, and they fail if they run later and read pruned channels. "
             "Remove them before pruning, or trace with inputs that run them.")
