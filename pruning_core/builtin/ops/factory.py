"""Tensor factories: new tensors take sizes written in code, ``*_like`` copies a shape."""

from __future__ import annotations

from ...graph.rules import same_as_first
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def constant(call: OpCall) -> None:
    """A tensor whose sizes come from arguments: sized in code, unless Python read them from a traced shape."""
    requested = call.arg("size")
    for out in call.outputs:
        dims = [call.new(size, 0) for size in out.shape]
        traced = call.follow_sizes(requested, dims) if isinstance(requested, (list, tuple)) and \
            len(requested) == out.ndim else [False] * out.ndim
        for expr, followed in zip(dims, traced):
            if not followed:
                call.structure(expr, f"size written in code at {call.name}")
        call.set(out, dims)


FACTORIES = [
    "aten::arange", "aten::zeros", "aten::ones", "aten::full", "aten::empty", "aten::empty_strided",
    "aten::scalar_tensor", "aten::linspace", "aten::logspace", "aten::randn", "aten::rand", "aten::randint",
    "aten::randperm", "aten::eye", "aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::new_empty",
    "aten::new_empty_strided", "aten::lift_fresh", "aten::tensor", "aten::_efficientzerotensor",
]
LIKE = [
    "aten::zeros_like", "aten::ones_like", "aten::empty_like", "aten::full_like", "aten::rand_like",
    "aten::randn_like", "aten::randint_like",
]


@hookimpl
def register_op_rules():
    table = {name: constant for name in FACTORIES}
    table.update({name: same_as_first for name in LIKE})
    return specs(table)
