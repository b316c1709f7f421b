"""Trial pruning: check on a throwaway copy that removing a channel keeps the model runnable.

Tracing sees sizes, not where they come from: ``x.reshape(n, self.hidden_dim, -1)``
looks the same as ``x.reshape(n, -1, h * w)``. Before handing out groups, the
graph removes one channel of every candidate group on a ``meta`` copy of the
model (no weights allocated) and runs it; groups whose removal breaks the
forward pass or changes an output shape are frozen, with the error as reason.
One forward pass checks all groups at once; failures are found by bisection.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn

from .build import TracedModel
from .dims import Atom
from .meta import to_meta, weights_on_meta
from .removal import ChannelRemover
from .trace import iter_tensors
from .transaction import Transaction

T = TypeVar("T")

REAL_COPY_LIMIT_BYTES = 1 << 30


_IMMUTABLE = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _clone_module(module: nn.Module, tensor_map: Callable[[torch.Tensor], torch.Tensor],
                  memo: Dict[int, Any]) -> nn.Module:
    """A copy of the module tree with new tensors; plain attributes are deep-copied unless immutable.

    Much faster than ``copy.deepcopy`` on a model: tensors are replaced, not pickled.
    """
    if id(module) in memo:
        return memo[id(module)]
    clone = module.__class__.__new__(module.__class__)
    memo[id(module)] = clone
    def mapped(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if tensor is None:
            return None
        if id(tensor) not in memo:
            memo[id(tensor)] = tensor_map(tensor)
        return memo[id(tensor)]

    state = {}
    for key, value in module.__dict__.items():
        if key in ("_parameters", "_buffers"):
            state[key] = {k: mapped(v) for k, v in value.items()}
        elif key == "_modules":
            state[key] = {k: (_clone_module(v, tensor_map, memo) if v is not None else None) for k, v in value.items()}
        elif key.endswith("_hooks") or key.endswith("_hooks_with_kwargs") or key.endswith("_hooks_always_called"):
            state[key] = type(value)()
        elif isinstance(value, _IMMUTABLE) or (isinstance(value, tuple) and all(isinstance(v, _IMMUTABLE) for v in value)):
            state[key] = value
        else:
            state[key] = copy.deepcopy(value, memo)
    clone.__dict__.update(state)
    return clone


def _meta_tensor(tensor: torch.Tensor) -> torch.Tensor:
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=tensor.requires_grad)
    return tensor.to("meta")


def _meta_copy(model: nn.Module) -> nn.Module:
    return _clone_module(model, _meta_tensor, {})


def shapes_of(output: Any) -> List[Tuple[int, ...]]:
    return [tuple(t.shape) for t in iter_tensors(output)]


def shapes_match(reference: Sequence[Tuple[int, ...]], shapes: Sequence[Tuple[int, ...]],
                 dynamic: Sequence[Tuple[bool, ...]]) -> bool:
    """Same outputs with the same shapes, except dims whose size the data decides (``dynamic``).

    A size the tracer saw as a constant may follow a data-decided one through Python
    (``torch.zeros(len(boxes), 17, 3)`` for a detector's keypoints): a dim that changes
    exactly as a data-decided dim of the same size changed is accepted too.
    """
    if len(reference) != len(shapes) or any(len(r) != len(g) for r, g in zip(reference, shapes)):
        return False
    flags = list(dynamic) + [()] * (len(reference) - len(dynamic))
    moves = {(r, g) for ref, got, dyn in zip(reference, shapes, flags)
             for i, (r, g) in enumerate(zip(ref, got)) if i < len(dyn) and dyn[i] and r != g}
    for ref, got, dyn in zip(reference, shapes, flags):
        for i, (r, g) in enumerate(zip(ref, got)):
            if r != g and not (i < len(dyn) and dyn[i]) and (r, g) not in moves:
                return False
    return True


def bisect_failures(items: Sequence[T], failure: Callable[[Sequence[T]], Optional[str]],
                    together: Callable[[str], str] = lambda reason: reason) -> List[Tuple[T, str]]:
    """The items responsible for ``failure(items)`` returning a reason, found by bisection.

    When no smaller part fails on its own, only the combination does: every item is blamed,
    with ``together(reason)`` as its reason.
    """
    reason = failure(items)
    if reason is None:
        return []
    if len(items) == 1:
        return [(items[0], reason)]
    mid = len(items) // 2
    found = bisect_failures(items[:mid], failure, together) + bisect_failures(items[mid:], failure, together)
    return found or [(item, together(reason)) for item in items]


def run_model(traced: TracedModel, model: nn.Module, inputs: Any) -> Any:
    """One forward pass without gradients, layers whose handler asks for it in eval mode."""
    from .capture import EvalWhereHandlersAsk

    with torch.no_grad(), EvalWhereHandlersAsk(model, traced.resolver.handler_of):
        return traced.forward(model, inputs)


def verify_forward(traced: TracedModel) -> Optional[str]:
    """Run the example inputs through the model; return why it failed, or None if outputs keep their shapes."""
    from .capture import EvalWhereHandlersAsk, ShapeOnlyForwards

    model, recorder = traced.model, traced.recorder
    try:
        with torch.no_grad(), EvalWhereHandlersAsk(model, traced.resolver.handler_of):
            if traced.shapes_on_meta:
                with weights_on_meta(model), ShapeOnlyForwards(model, traced.resolver.handler_of):
                    output = traced.forward(model, to_meta(traced.example_inputs))
            else:
                output = traced.forward(model, traced.example_inputs)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    if not shapes_match(recorder.output_shapes, shapes_of(output), recorder.output_dynamic):
        return f"the output shapes changed from {recorder.output_shapes} to {shapes_of(output)}"
    return None


class TrialRunner:
    """Runs the model's forward on copies with some channels removed."""

    def __init__(self, traced: TracedModel, remover: ChannelRemover) -> None:
        self.traced = traced
        self.remover = remover
        self.base: Optional[nn.Module] = None
        self.inputs: Any = None
        self.reference = list(traced.recorder.output_shapes)
        self.dynamic = list(traced.recorder.output_dynamic)
        self.reason = ""
        for make_copy, make_inputs in ((_meta_copy, to_meta), (_real_copy, lambda x: x)):
            try:
                candidate = make_copy(traced.model)
                inputs = make_inputs(traced.example_inputs)
                output = run_model(traced, candidate, inputs)
                if not shapes_match(self.reference, shapes_of(output), self.dynamic):
                    raise RuntimeError("the copy's outputs differ from the traced outputs")
            except Exception as exc:  # data-dependent models cannot run on meta
                self.reason = f"{type(exc).__name__}: {exc}"
                continue
            self.base, self.inputs = candidate, inputs
            break

    @property
    def available(self) -> bool:
        return self.base is not None

    def passes(self, selections: Sequence[Any], outputs_may_change: bool = False) -> Tuple[bool, str]:
        """Remove channels on a fresh copy and run it.

        ``selections`` holds atoms (their first channel is removed) or ``(atom, elements)`` pairs.
        With ``outputs_may_change`` only the forward pass must succeed.
        """
        trial = _clone_module(self.base, lambda t: t, {})
        lookup = dict(trial.named_modules())
        chosen = [item if isinstance(item, tuple) else (item, torch.tensor([0])) for item in selections]
        # The copy is thrown away; only the channel bookkeeping must be put back.
        transaction = Transaction(atoms=[atom for atom, _ in chosen])
        try:
            for selection in chosen:  # one group at a time, as real pruning does (it updates the bookkeeping)
                self.remover.apply_to_copy(trial, lookup, [selection])
            output = run_model(self.traced, trial, self.inputs)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            transaction.rollback()
        if not outputs_may_change and not shapes_match(self.reference, shapes_of(output), self.dynamic):
            return False, "the output shape changed"
        return True, ""

    def failing(self, atoms: Sequence[Atom]) -> Dict[Atom, str]:
        """Atoms whose removal breaks the model, found by bisection."""
        def failure(subset: Sequence[Atom]) -> Optional[str]:
            ok, reason = self.passes(subset)
            return None if ok else reason

        return dict(bisect_failures(atoms, failure,
                                    lambda reason: f"removing these channels together breaks the model ({reason})"))


def _real_copy(model: nn.Module) -> nn.Module:
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if size > REAL_COPY_LIMIT_BYTES:
        raise RuntimeError("model too large for a real trial copy")

    def own_copy(tensor: torch.Tensor) -> torch.Tensor:
        data = tensor.detach().clone()
        return nn.Parameter(data, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else data

    return _clone_module(model, own_copy, {})
