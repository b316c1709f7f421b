"""Neural-network operators: convolution, normalization, pooling, resampling and padding."""

from __future__ import annotations

import re
from typing import List

import torch

from ...graph.dims import ONE, STRUCTURED, Cat, DimError, Expr, Prod, resolve
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def _spatial_out(call: OpCall, source: torch.Tensor, out: torch.Tensor, keep: int) -> List[Expr]:
    """Leading ``keep`` dims pass through; spatial dims reuse the input's when the size is unchanged."""
    if out.ndim != source.ndim:
        raise DimError(f"{call.name} changed the number of dimensions")
    dims = call.dims(source)
    result: List[Expr] = []
    for pos, size in enumerate(out.shape):
        if pos < keep or source.shape[pos] == size:
            result.append(dims[pos])
        else:
            result.append(call.space.frozen(size, f"spatial size from {call.name}"))
    return result


def convolution(call: OpCall) -> None:
    x, w, b = call.arg("input"), call.arg("weight"), call.arg("bias")
    groups = int(call.arg("groups", 1))
    transposed = bool(call.arg("transposed", False))
    dx, dw = call.dims(x), call.dims(w)
    space = call.space
    batched = x.ndim == w.ndim
    cdim = 1 if batched else 0
    for expr in dw[2:]:
        call.freeze(expr, "convolution kernel size")
    if groups == 1:
        if transposed:
            call.unify(dx[cdim], dw[0])
            out_c = dw[1]
        else:
            call.unify(dx[cdim], dw[1])
            out_c = dw[0]
    else:
        g_in, per_in = space.split_factor(dx[cdim], groups)
        if per_in.size > 1:
            space.mark(g_in, STRUCTURED, f"groups of {call.name}")
        if transposed:
            g_w, per_w = space.split_factor(dw[0], groups)
            call.unify(g_in, g_w)
            call.unify(per_in, per_w)
            out_c = resolve(Prod((g_in, dw[1])))
        else:
            call.unify(per_in, dw[1])
            g_out, _ = space.split_factor(dw[0], groups)
            call.unify(g_in, g_out)
            out_c = dw[0]
    if isinstance(b, torch.Tensor):
        call.unify(out_c, call.dims(b)[0])
    out = call.outputs[0]
    result = [dx[0]] if batched else []
    result.append(out_c)
    for pos in range(len(result), out.ndim):
        if x.shape[pos] == out.shape[pos]:
            result.append(dx[pos])
        else:
            result.append(space.frozen(out.shape[pos], "convolution output size"))
    call.set(out, result)


def batch_norm(call: OpCall) -> None:
    x = call.arg("input")
    dx = call.dims(x)
    channel = dx[1] if x.ndim > 1 else dx[0]
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = call.arg(name)
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.numel() == x.shape[1 if x.ndim > 1 else 0]:
            call.unify(channel, call.dims(t)[0])
    for index, out in enumerate(call.outputs):
        if index == 0:
            call.set(out, dx)
        elif out.ndim == 1 and out.numel() == channel.size:
            call.set(out, [channel])
        else:
            call.set(out, [call.space.frozen(s, "batch-norm statistics") for s in out.shape])


def layer_norm(call: OpCall) -> None:
    x = call.arg("input")
    shape = call.arg("normalized_shape")
    k = len(shape)
    dx = call.dims(x)
    affine = [t for t in (call.arg("weight"), call.arg("bias")) if isinstance(t, torch.Tensor)]
    for t in affine:
        for a, b in zip(dx[-k:], call.dims(t)):
            call.unify(a, b)
    if affine:  # F.layer_norm(x, self.normalized_shape, self.weight): the shape the module keeps follows pruning
        call.bind_stored_sizes(affine[0], shape, dx[-k:])
    for index, out in enumerate(call.outputs):
        if index == 0:
            call.set(out, dx)
        elif out.ndim == x.ndim:
            call.set(out, dx[:-k] + [ONE] * k)
        else:
            call.set(out, [call.space.frozen(s, "normalization statistics") for s in out.shape])


def group_norm(call: OpCall) -> None:
    x = call.arg("input")
    groups = int(call.arg("group"))
    dx = call.dims(x)
    space = call.space
    g_expr: Expr = ONE
    if groups > 1:
        g_expr, _ = space.split_factor(dx[1], groups)
        space.mark(g_expr, STRUCTURED, "number of groups of group_norm")
    for name in ("weight", "bias"):
        t = call.arg(name)
        if isinstance(t, torch.Tensor):
            call.unify(dx[1], call.dims(t)[0])
    for index, out in enumerate(call.outputs):
        if index == 0:
            call.set(out, dx)
        elif out.ndim == 2:
            call.set(out, [dx[0], g_expr])
        else:
            call.set(out, [space.frozen(s, "group-norm statistics") for s in out.shape])


def spatial(call: OpCall) -> None:
    """Pooling and resampling: batch and channel dims pass through, spatial dims may change."""
    match = re.search(r"(\d)d", call.name)
    n_spatial = int(match.group(1)) if match else 2
    source = call.args[0]
    keep = source.ndim - n_spatial
    for out in call.outputs:
        call.set(out, _spatial_out(call, source, out, keep))


def grid_sample(call: OpCall) -> None:
    x, grid = call.arg("input"), call.arg("grid")
    dx = call.dims(x)
    call.unify(dx[0], call.dims(grid)[0])
    out = call.outputs[0]
    call.set(out, dx[:2] + [call.space.frozen(s, "grid_sample output size") for s in out.shape[2:]])


def constant_pad(call: OpCall) -> None:
    """Padding with constants: the padded ends are new constant-size pieces next to the data."""
    x = call.arg("self")
    pad = list(call.arg("pad"))
    dims = call.dims(x)
    space = call.space
    for i in range(len(pad) // 2):
        d = x.ndim - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        if before == 0 and after == 0:
            continue
        expr = dims[d]
        if before < 0 or after < 0:
            first_new = len(space.atoms)
            pieces = space.cut(expr, [max(0, -before), x.shape[d] - max(0, -after)])
            expr = pieces[1] if before < 0 else pieces[0]
            for atom in space.atoms[first_new:]:
                atom.flags |= STRUCTURED
        parts = []
        if before > 0:
            parts.append(call.new(before, note="padding"))
        parts.append(expr)
        if after > 0:
            parts.append(call.new(after, note="padding"))
        dims[d] = resolve(Cat(parts))
    call.set(call.outputs[0], dims)


def positional_pad(call: OpCall) -> None:
    """Reflection/replication padding reads positions near the edges: those dims are frozen."""
    x = call.arg("self")
    pad = list(call.arg("padding"))
    dims = call.dims(x)
    out = call.outputs[0]
    for i in range(len(pad) // 2):
        d = x.ndim - 1 - i
        call.freeze(dims[d], f"padded by {call.name}")
        dims[d] = call.space.frozen(out.shape[d], f"padded by {call.name}")
    call.set(out, dims)


def im2col(call: OpCall) -> None:
    x = call.arg("self")
    dx = call.dims(x)
    out = call.outputs[0]
    cdim = x.ndim - 3
    kernel = out.shape[cdim] // x.shape[cdim]
    result = dx[:cdim] + [resolve(Prod((dx[cdim], call.space.frozen(kernel, "im2col kernel"))))]
    result.append(call.space.frozen(out.shape[-1], "im2col positions"))
    call.set(out, result)


SPATIAL_OPS = [
    "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d", "aten::max_pool1d_with_indices",
    "aten::max_pool2d_with_indices", "aten::max_pool3d_with_indices", "aten::avg_pool1d", "aten::avg_pool2d",
    "aten::avg_pool3d", "aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d",
    "aten::_adaptive_avg_pool2d", "aten::_adaptive_avg_pool3d", "aten::adaptive_max_pool1d",
    "aten::adaptive_max_pool2d", "aten::adaptive_max_pool3d", "aten::fractional_max_pool2d",
    "aten::fractional_max_pool3d", "aten::upsample_nearest1d", "aten::upsample_nearest2d",
    "aten::upsample_nearest3d", "aten::_upsample_nearest_exact1d", "aten::_upsample_nearest_exact2d",
    "aten::_upsample_nearest_exact3d", "aten::upsample_linear1d", "aten::upsample_bilinear2d",
    "aten::_upsample_bilinear2d_aa", "aten::upsample_bicubic2d", "aten::_upsample_bicubic2d_aa",
    "aten::upsample_trilinear3d", "aten::max_unpool2d", "aten::max_unpool3d",
]


@hookimpl
def register_op_rules():
    table = {name: spatial for name in SPATIAL_OPS}
    table.update({
        "aten::convolution": convolution,
        "aten::_convolution": convolution,
        "aten::native_batch_norm": batch_norm,
        "aten::_native_batch_norm_legit": batch_norm,
        "aten::_native_batch_norm_legit_no_training": batch_norm,
        "aten::_native_batch_norm_legit_functional": batch_norm,
        "aten::cudnn_batch_norm": batch_norm,
        "aten::miopen_batch_norm": batch_norm,
        "aten::native_layer_norm": layer_norm,
        "aten::_fused_rms_norm": layer_norm,
        "aten::native_group_norm": group_norm,
        "aten::grid_sampler_2d": grid_sample,
        "aten::grid_sampler_3d": grid_sample,
        "aten::constant_pad_nd": constant_pad,
        "aten::reflection_pad1d": positional_pad,
        "aten::reflection_pad2d": positional_pad,
        "aten::reflection_pad3d": positional_pad,
        "aten::replication_pad1d": positional_pad,
        "aten::replication_pad2d": positional_pad,
        "aten::replication_pad3d": positional_pad,
        "aten::im2col": im2col,
    })
    return specs(table)
