"""Matrix products and attention: contracted dimensions are the same channels."""

from __future__ import annotations

from typing import List

import torch

from ...graph.dims import STRUCTURED, Expr
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def _add_bias(call: OpCall, dims: List[Expr], bias: torch.Tensor) -> List[Expr]:
    """Broadcast an additive term into already computed output dims."""
    if not isinstance(bias, torch.Tensor) or bias.ndim == 0:
        return dims
    bdims = call.dims(bias)
    for offset in range(1, bias.ndim + 1):
        if bias.shape[-offset] != 1 and bias.shape[-offset] == call.outputs[0].shape[-offset]:
            call.unify(dims[-offset], bdims[-offset])
    return dims


def mm(call: OpCall) -> None:
    a, b = call.arg("self"), call.arg("mat2")
    da, db = call.dims(a), call.dims(b)
    call.unify(da[1], db[0])
    call.set(call.outputs[0], [da[0], db[1]])


def addmm(call: OpCall) -> None:
    a, b = call.arg("mat1"), call.arg("mat2")
    da, db = call.dims(a), call.dims(b)
    call.unify(da[1], db[0])
    call.set(call.outputs[0], _add_bias(call, [da[0], db[1]], call.arg("self")))


def bmm(call: OpCall) -> None:
    a = call.arg("self") if call.arg("batch1") is None else call.arg("batch1")
    b = call.arg("mat2") if call.arg("batch2") is None else call.arg("batch2")
    da, db = call.dims(a), call.dims(b)
    call.unify(da[0], db[0])
    call.unify(da[2], db[1])
    dims = [da[0], da[1], db[2]]
    if call.arg("batch1") is not None:
        dims = _add_bias(call, dims, call.arg("self"))
    call.set(call.outputs[0], dims)


def grouped_mm(call: OpCall) -> None:
    """``torch._grouped_mm``: mixture-of-experts layers run every expert's matrix on its tokens at once.

    ``(tokens, K) x (experts, K, N) -> (tokens, N)`` (tokens grouped by expert through ``offs``) and
    the batched ``(experts, M, K) x (experts, K, N)``: the contracted K and the output N are channels
    shared by every expert, so experts keep equal widths; the experts dimension is never pruned here
    (the router decides which expert a token goes to).
    """
    a, b = call.arg("self"), call.arg("mat2")
    da, db = call.dims(a), call.dims(b)
    out = call.outputs[0]
    if b.ndim == 3 and a.ndim in (2, 3):
        call.unify(da[-1], db[1])
        call.freeze(db[0], "experts of a grouped matrix product")
        aligned = max(1, 16 // b.element_size())  # the kernel needs rows of a multiple of 16 bytes
        call.space.require_multiple(db[1], aligned)
        call.space.require_multiple(db[2], aligned)
        if a.ndim == 3:
            call.unify(da[0], db[0])
        dims = da[:-1] + [db[2]]
    else:  # grouped along the contracted dimension: the groups are sizes written in code
        for expr in da + db:
            call.freeze(expr, "a grouped matrix product over the contracted dimension")
        dims = [call.space.frozen(size, "output of a grouped matrix product") for size in out.shape]
    bias = call.arg("bias")
    if isinstance(bias, torch.Tensor) and bias.ndim >= 1 and bias.shape[-1] == out.shape[-1] and b.ndim == 3:
        call.unify(dims[-1], call.dims(bias)[-1])
    call.set(out, dims)


def linear(call: OpCall) -> None:
    x, w, b = call.arg("input"), call.arg("weight"), call.arg("bias")
    dx, dw = call.dims(x), call.dims(w)
    call.unify(dx[-1], dw[1])
    if isinstance(b, torch.Tensor) and b.ndim == 1:
        call.unify(dw[0], call.dims(b)[0])
    call.set(call.outputs[0], dx[:-1] + [dw[0]])


def matmul(call: OpCall) -> None:
    a, b = call.arg("self"), call.arg("other")
    da, db = call.dims(a), call.dims(b)
    out = call.outputs[0]
    if a.ndim == 1 and b.ndim == 1:
        call.unify(da[0], db[0])
        call.set(out, [])
        return
    k_a = da[-1]
    k_b = db[0] if b.ndim == 1 else db[-2]
    call.unify(k_a, k_b)
    batch_a = da[:-2] if a.ndim >= 2 else []
    batch_b = db[:-2] if b.ndim >= 2 else []
    rows = [da[-2]] if a.ndim >= 2 else []
    cols = [db[-1]] if b.ndim >= 2 else []
    lead = out.ndim - len(rows) - len(cols)
    batch: List[Expr] = []
    for pos in range(lead):
        ia = len(batch_a) - lead + pos
        ib = len(batch_b) - lead + pos
        size = out.shape[pos]
        chosen = None
        for dims, index, tensor_shape in ((batch_a, ia, a.shape), (batch_b, ib, b.shape)):
            if index >= 0 and tensor_shape[index] == size and size != 1:
                if chosen is None:
                    chosen = dims[index]
                else:
                    call.unify(chosen, dims[index])
        batch.append(chosen if chosen is not None else call.new(size))
    call.set(out, batch + rows + cols)


def mv(call: OpCall) -> None:
    a, v = call.arg("self") if call.arg("mat") is None else call.arg("mat"), call.arg("vec")
    da, dv = call.dims(a), call.dims(v)
    call.unify(da[1], dv[0])
    call.set(call.outputs[0], [da[0]])


def dot(call: OpCall) -> None:
    a, b = call.arg("self"), call.arg("tensor")
    call.unify(call.dims(a)[0], call.dims(b)[0])
    call.set(call.outputs[0], [])


def outer(call: OpCall) -> None:
    a, b = call.arg("self"), call.arg("vec2")
    call.set(call.outputs[0], [call.dims(a)[0], call.dims(b)[0]])


def attention(call: OpCall) -> None:
    """Scaled dot-product attention, including grouped-query attention (fewer k/v heads)."""
    q, k, v = call.arg("query"), call.arg("key"), call.arg("value")
    dq, dk, dv = call.dims(q), call.dims(k), call.dims(v)
    space = call.space
    call.unify(dq[-1], dk[-1])
    call.unify(dk[-2], dv[-2])
    for i in range(1, q.ndim - 1):
        pos = q.ndim - 2 - i
        if pos < 0:
            break
        kpos, vpos = k.ndim - 2 - i, v.ndim - 2 - i
        if kpos < 0 or vpos < 0:
            continue
        call.unify(dk[kpos], dv[vpos])
        if q.shape[pos] == k.shape[kpos]:
            call.unify(dq[pos], dk[kpos])
        elif k.shape[kpos] > 1 and q.shape[pos] % k.shape[kpos] == 0:
            groups, per_group = space.split_factor(dq[pos], k.shape[kpos])
            call.unify(groups, dk[kpos])
            space.mark(per_group, STRUCTURED, "query heads per key/value head")
    lead = dq[:-2]
    out_dims = lead + [dq[-2], dv[-1]]
    mask = call.arg("attn_mask") if call.arg("attn_mask") is not None else call.arg("attn_bias")
    if isinstance(mask, torch.Tensor):
        full_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
        full = lead + [dq[-2], dk[-2]]
        mdims = call.dims(mask)
        for offset in range(1, min(mask.ndim, len(full)) + 1):
            if mask.shape[-offset] != 1 and mask.shape[-offset] == full_shape[-offset]:
                call.unify(full[-offset], mdims[-offset])
    for index, out in enumerate(call.outputs):
        if index == 0:
            call.set(out, out_dims)
        elif tuple(out.shape) == tuple(q.shape[:-1]):
            call.set(out, lead + [dq[-2]])
        else:
            call.set(out, [space.frozen(s, "attention statistics") for s in out.shape])


@hookimpl
def register_op_rules():
    return specs({
        "aten::mm": mm,
        "aten::addmm": addmm,
        "aten::bmm": bmm,
        "aten::baddbmm": bmm,
        "aten::linear": linear,
        "aten::_grouped_mm": grouped_mm,
        "aten::matmul": matmul,
        "aten::mv": mv,
        "aten::addmv": mv,
        "aten::dot": dot,
        "aten::vdot": dot,
        "aten::outer": outer,
        "aten::ger": outer,
        "aten::_scaled_dot_product_flash_attention_for_cpu": attention,
        "aten::_scaled_dot_product_flash_attention": attention,
        "aten::_scaled_dot_product_efficient_attention": attention,
        "aten::_scaled_dot_product_cudnn_attention": attention,
        "aten::_scaled_dot_product_attention_math": attention,
        "aten::scaled_dot_product_attention": attention,
        "aten::_scaled_dot_product_fused_attention_overrideable": attention,
    })
