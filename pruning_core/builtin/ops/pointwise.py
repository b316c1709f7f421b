"""Element-wise and shape-preserving operators: copies, activations, softmax, dropout."""

from __future__ import annotations

from ...graph.rules import broadcast_into, norm_dim, pointwise, same_as_first, tensor_args
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def copy_into(call: OpCall) -> None:
    """``dst.copy_(src)``: the destination takes the broadcast source's channels."""
    dst, src = call.arg("self"), call.arg("src")
    call.set(call.outputs[0], broadcast_into(call, dst, [dst, src]))


def prelu(call: OpCall) -> None:
    """``prelu(x, weight)``: the weight runs along dim 1 (or is a single value)."""
    x, weight = call.arg("self"), call.arg("weight")
    dims = call.dims(x)
    if weight.numel() > 1 and x.ndim >= 2:
        call.unify(dims[1], call.dims(weight)[0])
    call.set(call.outputs[0], dims)


def cumulative(call: OpCall) -> None:
    """cumsum and friends keep every position (a prefix sum stays aligned)."""
    same_as_first(call)


def glu(call: OpCall) -> None:
    """``glu(x, dim)``: the two halves of ``dim`` are multiplied together, so they are one space."""
    x = call.arg("self")
    dim = norm_dim(call.arg("dim", -1), x.ndim)
    dims = call.dims(x)
    half_a, half_b = call.space.split_at(dims[dim], x.shape[dim] // 2)
    call.unify(half_a, half_b)
    out = list(dims)
    out[dim] = half_a
    call.set(call.outputs[0], out)


SHAPE_PRESERVING = [
    "aten::clone", "aten::_to_copy", "aten::alias", "aten::detach", "aten::contiguous",
    "aten::_softmax", "aten::_log_softmax", "aten::softmax", "aten::log_softmax", "aten::_safe_softmax",
    "aten::native_dropout", "aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
    "aten::fill_", "aten::zero_", "aten::normal_", "aten::uniform_", "aten::bernoulli_", "aten::bernoulli",
    "aten::tril", "aten::triu", "aten::_masked_softmax", "aten::nan_to_num", "aten::lift_fresh_copy",
    "aten::_conj", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_masked_index",
]


# Element-wise operators that carry no ``pointwise`` tag (or whose in-place form needs naming).
UNTAGGED_POINTWISE = [
    "aten::hardswish", "aten::hardswish_", "aten::hardsigmoid", "aten::hardsigmoid_", "aten::hardtanh",
    "aten::hardtanh_", "aten::log_sigmoid", "aten::log_sigmoid_forward", "aten::rsub", "aten::erf", "aten::mish",
    "aten::mish_", "aten::elu", "aten::elu_", "aten::leaky_relu", "aten::leaky_relu_", "aten::gelu", "aten::gelu_",
    "aten::softplus", "aten::threshold", "aten::threshold_", "aten::celu", "aten::celu_", "aten::selu",
    "aten::selu_", "aten::silu", "aten::silu_", "aten::relu6", "aten::relu", "aten::relu_", "aten::sigmoid",
    "aten::sigmoid_", "aten::tanh", "aten::tanh_", "aten::clamp", "aten::clamp_", "aten::clamp_min",
    "aten::clamp_max", "aten::rrelu", "aten::rrelu_with_noise",
]


@hookimpl
def register_op_rules():
    table = {name: pointwise for name in UNTAGGED_POINTWISE}
    table.update({name: same_as_first for name in SHAPE_PRESERVING})
    table.update({
        "aten::copy_": copy_into,
        "aten::copy": copy_into,
        "aten::_prelu_kernel": prelu,
        "aten::prelu": prelu,
        "aten::cumsum": cumulative,
        "aten::cumprod": cumulative,
        "aten::logcumsumexp": cumulative,
        "aten::glu": glu,
        "aten::where": pointwise,
        "aten::masked_fill": pointwise,
        "aten::masked_fill_": pointwise,
        "aten::lerp": pointwise,
        "aten::addcmul": pointwise,
        "aten::addcdiv": pointwise,
    })
    return specs(table)


__all__ = ["register_op_rules", "tensor_args"]
