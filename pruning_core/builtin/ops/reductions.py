"""Reductions: sum, mean, amax, var, norms, argmax. Reduced dims disappear (or become 1)."""

from __future__ import annotations

from ...graph.rules import norm_dims, reduce_dims
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def reduction(call: OpCall) -> None:
    """Reduce over ``dim`` (all dims when absent); other dims pass through unchanged."""
    source = call.arg("self")
    dim = call.arg("dim", None)
    keepdim = bool(call.arg("keepdim", False))
    reduced = norm_dims(dim if dim not in (None, []) else None, source.ndim)
    dims = reduce_dims(call, source, reduced, keepdim)
    for out in call.outputs:
        if out.ndim == len(dims):
            call.set(out, dims)
        else:
            call.set(out, [call.space.frozen(s, f"shape of {call.name}") for s in out.shape])


REDUCTIONS = [
    "aten::sum", "aten::mean", "aten::amax", "aten::amin", "aten::max.dim", "aten::max.default", "aten::min.dim",
    "aten::min.default", "aten::argmax",
    "aten::argmin", "aten::var", "aten::std", "aten::var_mean", "aten::std_mean", "aten::logsumexp",
    "aten::norm", "aten::linalg_vector_norm", "aten::prod", "aten::any", "aten::all", "aten::count_nonzero",
    "aten::nansum", "aten::nanmean", "aten::median", "aten::nanmedian", "aten::mode", "aten::kthvalue",
    "aten::aminmax",
]


@hookimpl
def register_op_rules():
    return specs({name: reduction for name in REDUCTIONS})
