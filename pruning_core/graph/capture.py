"""Running a forward pass under the tracer: the dispatch mode that records operators, module hooks
that record handled layers as single calls, and the context managers that stand in for a layer's
forward (shape-only stand-ins, eval mode where a handler asks for it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..calling import call_model
from .symbolic import SizeTracker, bind_to_weights, followed_attributes, scrub
from .trace import Recorder, iter_tensors

class _DispatchTracer(TorchDispatchMode):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        recorder, quiet = self.recorder, self.recorder.in_hook
        recorder.in_hook = True  # kernels and the recorder read shapes too: those are not the model's
        try:
            out = func(*args, **kwargs)
            if recorder.handled_depth == 0:
                recorder.record_op(func, args, kwargs, out)
        finally:
            recorder.in_hook = quiet
        return out


def _install_hooks(model: torch.nn.Module, recorder: Recorder, tracer: "_DispatchTracer") -> List[Any]:
    """Every module gets a pre/post hook pair: handled layers become one node, others name the scope.

    While a handled layer runs, the tracer is paused: its inner operators are not
    needed, and decomposed kernels (BatchNorm on meta) would cost Python time.
    """
    handles = []
    actions: List[Tuple[str, Any]] = []

    def pre(module, args, kwargs):
        recorder.in_hook = True
        try:
            _pre(module, args, kwargs)
        finally:
            recorder.in_hook = False

    def post(module, args, kwargs, output=None):
        recorder.in_hook = True
        try:
            _post(module, args, kwargs, output)
        finally:
            recorder.in_hook = False

    def _pre(module, args, kwargs):
        if id(module) in recorder.handlers:
            outermost = recorder.handled_depth == 0
            inputs = list(iter_tensors(args)) + list(iter_tensors(kwargs)) if outermost else None
            actions.append(("handled", inputs))
            recorder.handled_depth += 1
            if outermost:
                recorder.scope.append(recorder.module_names.get(id(module), ""))  # names errors raised inside
                tracer.__exit__(None, None, None)
        elif recorder.handled_depth == 0:
            actions.append(("scope", None))
            recorder.scope.append(recorder.module_names.get(id(module), ""))
        else:
            actions.append(("inner", None))

    def _post(module, args, kwargs, output=None):
        if not actions:
            return
        kind, inputs = actions.pop()
        if kind == "handled":
            recorder.handled_depth -= 1
            if inputs is not None:
                tracer.__enter__()
                if output is None and recorder.error_scope is None:
                    recorder.error_scope = recorder.current_scope  # the innermost layer that raised
                recorder.scope.pop()
                if output is None:
                    return
                recorder.module_call(module, inputs, list(iter_tensors(output)))
        elif kind == "scope" and recorder.scope:
            if output is None and recorder.error_scope is None:
                recorder.error_scope = recorder.current_scope
            recorder.scope.pop()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    return handles


class ShapeOnlyForwards:
    """Context manager for meta runs: layers whose handler says ``shape_preserving`` skip their kernels.

    On ``meta`` nothing is computed anyway, but some meta kernels (BatchNorm's)
    are Python decompositions that cost milliseconds per call. A shape-preserving
    layer's output is simply a new tensor shaped like its input.
    """

    def __init__(self, model: torch.nn.Module, handler_of: Callable[[torch.nn.Module], Any]) -> None:
        self.patched = [m for m in model.modules() if getattr(handler_of(m), "shape_preserving", False)]

    @staticmethod
    def _shape_only(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.empty_like(x)

    def __enter__(self) -> "ShapeOnlyForwards":
        for module in self.patched:
            module.forward = self._shape_only
        return self

    def __exit__(self, *exc: Any) -> None:
        for module in self.patched:
            module.__dict__.pop("forward", None)


class EvalWhereHandlersAsk:
    """Context manager: layers whose handler sets ``trace_in_eval`` run in eval mode.

    A layer's train/eval mode can change what it computes without changing
    which channels it couples; BatchNorm in training mode would otherwise reject
    a batch of one and update its running statistics.
    """

    def __init__(self, model: torch.nn.Module, handler_of: Callable[[torch.nn.Module], Any]) -> None:
        self.switched = [m for m in model.modules()
                         if m.training and getattr(handler_of(m), "trace_in_eval", False)]

    def __enter__(self) -> "EvalWhereHandlersAsk":
        for module in self.switched:
            module.training = False
        return self

    def __exit__(self, *exc: Any) -> None:
        for module in self.switched:
            module.training = True


@contextlib.contextmanager
def _all_of(contexts: Sequence[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def run_trace(model: torch.nn.Module, recorder: Recorder, example_inputs: Any,
              forward_fn: Optional[Callable[[torch.nn.Module, Any], Any]],
              output_transform: Optional[Callable[[Any], Any]], on_meta: bool = False,
              symbolic: bool = False, size_attributes: Sequence[Tuple[torch.nn.Module, str, bool]] = (),
              contexts: Callable[[], Sequence[Any]] = tuple) -> Any:
    """Run one forward pass under the tracer and return its (transformed) output.

    With ``symbolic``, sizes the forward reads from shapes and size attributes are followed
    (see ``symbolic.py``); traced ints stored on modules are made plain again afterwards.
    ``contexts()`` gives the plugins' context managers (``tracing_context``), entered after the size patches.
    """
    if isinstance(example_inputs, dict):
        for key, value in example_inputs.items():
            for tensor in iter_tensors(value):
                recorder.register_input(tensor, f"input {key}")
    else:
        for index, tensor in enumerate(iter_tensors(example_inputs)):
            recorder.register_input(tensor, f"input {index}")
    buffers = None
    if any(m.training for m in model.modules()):
        # Training-mode forwards update running statistics; tracing must not.
        buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    tracer = _DispatchTracer(recorder)
    handles = _install_hooks(model, recorder, tracer)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused encoder kernels would hide the layers
    try:
        handler_of = recorder.handlers.get

        shape_only = ShapeOnlyForwards(model, lambda m: handler_of(id(m))) if on_meta else contextlib.nullcontext()
        sizes = SizeTracker(recorder, model) if symbolic else contextlib.nullcontext()
        attributes = followed_attributes(recorder, model, recorder.handlers, size_attributes) if symbolic else contextlib.nullcontext()
        with torch.no_grad(), EvalWhereHandlersAsk(model, lambda m: handler_of(id(m))), shape_only, attributes, \
                sizes, _all_of(contexts()), tracer:
            output = call_model(model, example_inputs, forward_fn)
            if output_transform is not None:
                output = output_transform(output)
        if symbolic:
            bind_to_weights(recorder)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if symbolic:
            scrub(model)
        for handle in handles:
            handle.remove()
        if buffers is not None:
            with torch.no_grad():
                for name, buf in model.named_buffers():
                    if name in buffers and buf.shape == buffers[name].shape:
                        buf.copy_(buffers[name])
    recorder.freeze_outputs(output)
    return output
