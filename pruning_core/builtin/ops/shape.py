"""Operators that move, merge or split dimensions: view/reshape, permute, expand, pixel shuffle."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from ...graph.dims import FROZEN, ONE, STRUCTURED, UNLOCKED, Atom, DimError, Expr, Prod, leaves, resolve
from ...graph.rules import norm_dim, norm_dims
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def _factor_queue(dims: List[Expr]) -> List[Expr]:
    queue: List[Expr] = []
    for expr in dims:
        expr = resolve(expr)
        if type(expr) is Prod:
            queue.extend(expr.factors)
        elif expr.size != 1:
            queue.append(expr)
    return queue


def _split_origin(call: OpCall) -> Dict[int, Tuple[int, int]]:
    """Per-trace memory of which view split produced an atom: serial -> (split id, position)."""
    return call.recorder.__dict__.setdefault("_view_splits", {})


def _blocks(in_shape: List[int], out_shape: List[int]) -> List[Tuple[List[int], List[int]]]:
    """Pair up runs of input and output dims whose products match (the reshape's independent blocks)."""
    blocks: List[Tuple[List[int], List[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        bi: List[int] = []
        bj: List[int] = []
        pi = pj = 1
        while True:
            if pi == pj and (bi or bj) and not (i < len(in_shape) and in_shape[i] == 1 and not bi) \
                    and not (j < len(out_shape) and out_shape[j] == 1 and not bj):
                break
            if pi <= pj and i < len(in_shape):
                pi *= in_shape[i]
                bi.append(i)
                i += 1
            elif j < len(out_shape):
                pj *= out_shape[j]
                bj.append(j)
                j += 1
            elif i < len(in_shape):
                pi *= in_shape[i]
                bi.append(i)
                i += 1
            else:
                break
        blocks.append((bi, bj))
    return blocks


def _reshape_block(call: OpCall, exprs: List[Expr], sizes: List[int]) -> List[Expr]:
    space = call.space
    queue = _factor_queue(exprs)
    result: List[Expr] = []
    for size in sizes:
        if size == 1:
            result.append(ONE)
            continue
        taken: List[Expr] = []
        acc = 1
        while acc < size:
            if not queue:
                raise DimError("reshape ran out of factors")
            factor = resolve(queue.pop(0))
            if factor.size == 1:
                continue
            if acc * factor.size <= size:
                taken.append(factor)
                acc *= factor.size
                continue
            need = size // acc
            if size % acc or factor.size % need:
                raise DimError(f"reshape of {factor.size} into {size} does not follow the product structure")
            outer, inner = space.split_factor(factor, need)
            taken.append(outer)
            queue.insert(0, inner)
            acc = size
        result.append(resolve(Prod(taken)))
    return result


def reshape(call: OpCall) -> None:
    """``view``/``reshape``: regroup the row-major factors of the input into the output shape.

    Factors that a reshape has to cut (``C`` into heads ``H*D``) are new atoms
    marked STRUCTURED, because their sizes are written in the code. A later
    reshape that merges such factors back in swapped order is a channel
    shuffle; its inner factor adapts to the tensor size and is unlocked.
    Independent blocks of dims are handled separately, so a block that cannot
    be related only freezes itself.
    """
    source = call.args[0]
    out = call.outputs[0]
    space = call.space
    dims = call.dims(source)
    first_new = len(space.atoms)
    result: List[Expr] = [ONE] * out.ndim
    for in_idx, out_idx in _blocks(list(source.shape), list(out.shape)):
        block_in = [dims[i] for i in in_idx]
        sizes = [out.shape[j] for j in out_idx]
        try:
            block_out = _reshape_block(call, block_in, sizes)
        except DimError as exc:
            note = f"reshape in {call.recorder.current_scope or 'the model'} does not follow the channel structure ({exc})"
            for expr in block_in:
                space.freeze(expr, note)
            block_out = [space.frozen(size, note) for size in sizes]
        for j, expr in zip(out_idx, block_out):
            result[j] = expr
    # Taken before following sizes: following may create the slots of a layer that has not run yet.
    created = [a for a in space.atoms[first_new:] if a.parent is None and a.definition is None]
    requested = call.arg("size") if call.arg("size") is not None else call.arg("shape")
    followed = set()
    if isinstance(requested, (list, tuple)) and len(requested) == out.ndim:
        # Sizes Python read from a tensor (C = x.shape[-1]) relate dims instead of being written in code.
        for j, traced in enumerate(call.follow_sizes(requested, result)):
            if traced:
                followed.update(id(a) for a in leaves(result[j]))
        followed.update(_inferred(requested, result, created))
    origin = _split_origin(call)
    for position, atom in enumerate(created):
        if id(atom) in followed:
            continue
        atom.flags |= STRUCTURED
        if not atom.notes:
            atom.notes.append(f"size written in code at {call.name} in {call.recorder.current_scope or 'the model'}")
        origin[atom.serial] = (first_new, position)
    _unlock_shuffles(result, origin)
    call.set(out, result)


def _inferred(requested: Sequence[Any], result: List[Expr], created: List[Atom]) -> List[int]:
    """The atom a ``-1`` of a reshape stands for, when it is one new factor of one input dim.

    ``reshape(B, N, self.num_heads, -1)``: the ``-1`` is whatever the heads leave, so it follows
    pruning by itself and is not a size written in code. A ``-1`` that spans other dims (the batch
    in ``view(-1, 16)``) stays as it was.
    """
    new = {id(atom) for atom in created}
    found = []
    for j, size in enumerate(requested):
        if type(size) is int and size == -1:
            expr = resolve(result[j])
            if type(expr) is Atom and id(expr) in new:
                found.append(id(expr))
    return found


def _unlock_shuffles(result: List[Expr], origin: Dict[int, Tuple[int, int]]) -> None:
    for expr in result:
        expr = resolve(expr)
        if type(expr) is not Prod:
            continue
        seen: Dict[int, Tuple[int, Atom]] = {}
        for factor in expr.factors:
            if type(factor) is not Atom or factor.serial not in origin:
                continue
            split_id, position = origin[factor.serial]
            if split_id in seen and seen[split_id][0] > position:
                # Merged in swapped order: (groups, per_group) -> (per_group, groups).
                inner = seen[split_id][1]
                if not inner.flags & FROZEN:
                    inner.flags |= UNLOCKED
            seen[split_id] = (position, factor)


def permute(call: OpCall) -> None:
    source = call.args[0]
    order = [norm_dim(d, source.ndim) for d in call.arg("dims")]
    dims = call.dims(source)
    call.set(call.outputs[0], [dims[d] for d in order])


def transpose(call: OpCall) -> None:
    source = call.args[0]
    dims = call.dims(source)
    if source.ndim >= 2:
        a = norm_dim(call.arg("dim0", 0), source.ndim)
        b = norm_dim(call.arg("dim1", 1), source.ndim)
        dims[a], dims[b] = dims[b], dims[a]
    call.set(call.outputs[0], dims)


def squeeze(call: OpCall) -> None:
    source = call.args[0]
    out = call.outputs[0]
    dims = call.dims(source)
    chosen = norm_dims(call.arg("dim"), source.ndim)
    kept = [e for i, e in enumerate(dims) if not (i in chosen and source.shape[i] == 1)]
    call.set(out, kept)


def unsqueeze(call: OpCall) -> None:
    source = call.args[0]
    dims = call.dims(source)
    dims.insert(norm_dim(call.arg("dim"), source.ndim + 1), ONE)
    call.set(call.outputs[0], dims)


def expand(call: OpCall) -> None:
    """Broadcast to a larger shape; sizes that appear here are written in the code."""
    source = call.args[0]
    out = call.outputs[0]
    dims = call.dims(source)
    lead = out.ndim - source.ndim
    result: List[Expr] = []
    fresh = []
    for pos, size in enumerate(out.shape):
        index = pos - lead
        if index >= 0 and source.shape[index] == size:
            result.append(dims[index])
        else:
            result.append(call.new(size, 0))
            fresh.append(pos)
    requested = call.arg("size")
    traced = call.follow_sizes(requested, result) if isinstance(requested, (list, tuple)) and \
        len(requested) == out.ndim else [False] * out.ndim
    for pos in fresh:
        if not traced[pos]:
            call.structure(result[pos], f"size written in code at {call.name}")
    call.set(out, result)


def repeat(call: OpCall) -> None:
    source = call.args[0]
    out = call.outputs[0]
    repeats = list(call.arg("repeats"))
    dims = call.dims(source)
    lead = len(repeats) - source.ndim
    result: List[Expr] = []
    for pos, times in enumerate(repeats):
        index = pos - lead
        if index < 0:
            result.append(call.new(times))
        elif times == 1:
            result.append(dims[index])
        else:
            result.append(resolve(Prod((call.new(times), dims[index]))))
    call.set(out, result)


def repeat_interleave(call: OpCall) -> None:
    source = call.args[0]
    times = call.arg("repeats")
    dim = call.arg("dim")
    if not isinstance(times, int) or dim is None:
        raise DimError("repeat_interleave with tensor repeats or no dim")
    dim = norm_dim(dim, source.ndim)
    dims = call.dims(source)
    dims[dim] = resolve(Prod((dims[dim], call.new(times))))
    call.set(call.outputs[0], dims)


def pixel_shuffle(call: OpCall) -> None:
    """``(C*r*r, H, W) -> (C, H*r, W*r)``: channels keep their order, ``r`` joins the spatial dims."""
    source = call.args[0]
    r = int(call.arg("upscale_factor"))
    dims = call.dims(source)
    space = call.space
    c_expr = dims[-3]
    channels, rr = space.split_factor(c_expr, source.shape[-3] // (r * r))
    r1, r2 = space.split_factor(rr, r)
    space.freeze(r1, "pixel_shuffle factor")
    space.freeze(r2, "pixel_shuffle factor")
    out = dims[:-3] + [channels, resolve(Prod((dims[-2], r1))), resolve(Prod((dims[-1], r2)))]
    call.set(call.outputs[0], out)


def pixel_unshuffle(call: OpCall) -> None:
    source = call.args[0]
    r = int(call.arg("downscale_factor"))
    dims = call.dims(source)
    space = call.space
    h, r1 = space.split_factor(dims[-2], source.shape[-2] // r)
    w, r2 = space.split_factor(dims[-1], source.shape[-1] // r)
    space.freeze(r1, "pixel_unshuffle factor")
    space.freeze(r2, "pixel_unshuffle factor")
    out = dims[:-3] + [resolve(Prod((dims[-3], r1, r2))), h, w]
    call.set(call.outputs[0], out)


def channel_shuffle(call: OpCall) -> None:
    """``channel_shuffle(x, g)``: ``(g, C/g)`` becomes ``(C/g, g)``; ``C/g`` stays prunable."""
    source = call.args[0]
    groups = int(call.arg("groups"))
    dims = call.dims(source)
    space = call.space
    g, per_group = space.split_factor(dims[1], groups)
    space.mark(g, STRUCTURED, "channel_shuffle groups")
    out = list(dims)
    out[1] = resolve(Prod((per_group, g)))
    call.set(call.outputs[0], out)


def restride(call: OpCall) -> None:
    """``as_strided``: handled only when it just adds or drops size-1 dims (how some kernels squeeze)."""
    source = call.args[0]
    out = call.outputs[0]
    kept_in = [(s, st) for s, st in zip(source.shape, source.stride()) if s != 1]
    kept_out = [(s, st) for s, st in zip(out.shape, out.stride()) if s != 1]
    if kept_in != kept_out or out.storage_offset() != source.storage_offset():
        raise DimError("as_strided with a new layout")
    dims = iter(e for e, s in zip(call.dims(source), source.shape) if s != 1)
    call.set(out, [ONE if size == 1 else next(dims) for size in out.shape])


def positions_matter(call: OpCall) -> None:
    """roll/flip: positions along the given dims move, so those dims cannot be pruned."""
    source = call.args[0]
    dims = call.dims(source)
    chosen = call.arg("dims", None)
    chosen = norm_dims(chosen if chosen is not None and chosen != [] else None, source.ndim)
    for d in chosen:
        call.freeze(dims[d], f"positions moved by {call.name}")
    call.set(call.outputs[0], dims)


def unfold(call: OpCall) -> None:
    source = call.args[0]
    dim = norm_dim(call.arg("dimension"), source.ndim)
    dims = call.dims(source)
    call.freeze(dims[dim], "sliding windows (unfold)")
    out = call.outputs[0]
    result = dims[:dim] + [call.space.frozen(out.shape[dim], "unfold windows")] + dims[dim + 1:]
    result.append(call.space.frozen(out.shape[-1], "unfold window size"))
    call.set(out, result)


@hookimpl
def register_op_rules():
    return specs({
        "aten::view": reshape,
        "aten::_unsafe_view": reshape,
        "aten::reshape": reshape,
        "aten::_reshape_alias": reshape,
        "aten::view_copy": reshape,
        "aten::flatten": reshape,
        "aten::unflatten": reshape,
        "aten::permute": permute,
        "aten::transpose": transpose,
        "aten::t": transpose,
        "aten::squeeze": squeeze,
        "aten::unsqueeze": unsqueeze,
        "aten::expand": expand,
        "aten::repeat": repeat,
        "aten::repeat_interleave": repeat_interleave,
        "aten::pixel_shuffle": pixel_shuffle,
        "aten::pixel_unshuffle": pixel_unshuffle,
        "aten::channel_shuffle": channel_shuffle,
        "aten::native_channel_shuffle": channel_shuffle,
        "aten::roll": positions_matter,
        "aten::flip": positions_matter,
        "aten::unfold": unfold,
        "aten::as_strided": restride,
        "aten::as_strided_": restride,
    })


__all__ = ["register_op_rules"]
