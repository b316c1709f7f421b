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
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .dims import Atom
from .trace import iter_tensors

if TYPE_CHECKING:  # pragma: no cover
    from .depgraph import DependencyGraph

REAL_COPY_LIMIT_BYTES = 1 << 30


def _to_meta(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta") if obj.is_floating_point() or obj.is_complex() else obj.to("meta")
    if isinstance(obj, (list, tuple)):
        converted = [_to_meta(o) for o in obj]
        return type(obj)(converted) if not hasattr(obj, "_fields") else type(obj)(*converted)
    if isinstance(obj, dict):
        return type(obj)((k, _to_meta(v)) for k, v in obj.items())
    return obj


def _meta_copy(model: nn.Module) -> nn.Module:
    memo: Dict[int, Any] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if isinstance(tensor, nn.Parameter):
            memo[id(tensor)] = nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=tensor.requires_grad)
        else:
            memo[id(tensor)] = tensor.to("meta")
    return copy.deepcopy(model, memo)


def _shapes(output: Any) -> List[Tuple[int, ...]]:
    return [tuple(t.shape) for t in iter_tensors(output)]


class TrialRunner:
    """Runs the model's forward on copies with some channels removed."""

    def __init__(self, graph: "DependencyGraph", example_inputs: Any,
                 forward: Callable[[nn.Module, Any], Any]) -> None:
        self.graph = graph
        self.forward = forward
        self.base: Optional[nn.Module] = None
        self.inputs: Any = None
        self.reference: Optional[List[Tuple[int, ...]]] = None
        self.reason = ""
        model = graph.model
        for make_copy, make_inputs in ((_meta_copy, _to_meta), (self._real_copy, lambda x: x)):
            try:
                candidate = make_copy(model)
                inputs = make_inputs(example_inputs)
                output = self._run(candidate, inputs)
            except Exception as exc:  # data-dependent models cannot run on meta
                self.reason = f"{type(exc).__name__}: {exc}"
                continue
            self.base, self.inputs, self.reference = candidate, inputs, _shapes(output)
            break

    def _run(self, model: nn.Module, inputs: Any) -> Any:
        from .trace import EvalWhereHandlersAsk

        with torch.no_grad(), EvalWhereHandlersAsk(model, self.graph._resolve_handler):
            return self.forward(model, inputs)

    @staticmethod
    def _real_copy(model: nn.Module) -> nn.Module:
        size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        if size > REAL_COPY_LIMIT_BYTES:
            raise RuntimeError("model too large for a real trial copy")
        return copy.deepcopy(model)

    @property
    def available(self) -> bool:
        return self.base is not None

    def passes(self, selections: Sequence[Any]) -> Tuple[bool, str]:
        """Remove channels on a fresh copy and run it.

        ``selections`` holds atoms (their first channel is removed) or ``(atom, elements)`` pairs.
        """
        trial = copy.deepcopy(self.base)
        lookup = dict(trial.named_modules())
        from .depgraph import _mark_removed

        chosen = [item if isinstance(item, tuple) else (item, torch.tensor([0])) for item in selections]
        saved = [(atom, atom.alive) for atom, _ in chosen]
        try:
            for selection in chosen:  # one group at a time, as real pruning does
                self.graph._apply_selections_to(trial, lookup, [selection])
                _mark_removed([selection])
            output = self._run(trial, self.inputs)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            for atom, alive in saved:
                atom.alive = alive
        if _shapes(output) != self.reference:
            return False, "the output shape changed"
        return True, ""

    def failing(self, atoms: Sequence[Atom]) -> Dict[Atom, str]:
        """Atoms whose removal breaks the model, found by bisection."""
        ok, reason = self.passes(atoms)
        if ok:
            return {}
        if len(atoms) == 1:
            return {atoms[0]: reason}
        mid = len(atoms) // 2
        bad = self.failing(atoms[:mid])
        bad.update(self.failing(atoms[mid:]))
        if not bad:  # only the combination fails: keep all of them
            return {atom: f"removing these channels together breaks the model ({reason})" for atom in atoms}
        return bad
