"""Operators that join, split or index dimensions: cat, split, slice, select, index, embedding."""

from __future__ import annotations

from typing import List, Optional

import torch

from ...graph.dims import (FROZEN, ONE, PARTS, STRUCTURED, Cat, DataDependentDimError, DimError, Expr, current_size,
                           resolve)
from ...graph.rules import broadcast_into, norm_dim
from ...graph.trace import OpCall
from ...hookspecs import hookimpl
from . import specs


def _mark_new(call: OpCall, first_new: int, note: str) -> None:
    """Atoms created by cutting a dimension at constant offsets are sized in code."""
    for atom in call.space.atoms[first_new:]:
        if atom.parent is None and atom.definition is None:
            atom.flags |= STRUCTURED
            if not atom.notes:
                atom.notes.append(note)


def cat(call: OpCall) -> None:
    tensors = [t for t in call.arg("tensors") if not (t.ndim == 1 and t.numel() == 0)]
    out = call.outputs[0]
    if not tensors:
        call.set(out, [call.space.frozen(s, "empty cat") for s in out.shape])
        return
    dim = norm_dim(call.arg("dim", 0), out.ndim)
    result = call.dims(tensors[0])
    for tensor in tensors[1:]:
        dims = call.dims(tensor)
        for d in range(out.ndim):
            if d != dim:
                call.unify(result[d], dims[d])
    result[dim] = resolve(Cat([call.dims(t)[dim] for t in tensors]))
    call.set(out, result)


def stack(call: OpCall) -> None:
    tensors = list(call.arg("tensors"))
    out = call.outputs[0]
    dim = norm_dim(call.arg("dim", 0), out.ndim)
    result = call.dims(tensors[0])
    for tensor in tensors[1:]:
        for a, b in zip(result, call.dims(tensor)):
            call.unify(a, b)
    result.insert(dim, Cat([ONE] * len(tensors)) if len(tensors) > 1 else ONE)
    call.set(out, result)


def _split_parts(call: OpCall, source: torch.Tensor, dim: int, sizes: List[int]) -> List[Expr]:
    """Expressions of consecutive parts of ``source`` along ``dim``.

    Equal parts (``chunk``) share one inner space: ``Prod(parts, inner)``, so
    pruning keeps them equal, as ``chunk`` needs (constant equal sizes keep them). Unequal parts are
    cut at their offsets; each part whose size is a constant is STRUCTURED.
    """
    expr = call.dims(source)[dim]
    space = call.space
    requested = call.arg("split_sizes")
    if len(sizes) > 1 and len(set(sizes)) == 1:
        outer, inner = space.split_factor(expr, len(sizes))
        # the code unpacks a fixed number of parts, so no structure hint may unlock their count
        space.mark(outer, FROZEN | PARTS, f"number of parts in {call.name}")
        if isinstance(call.arg("split_size"), int):  # torch.split(x, self.in_channels // self.num_paths)
            requested = [call.arg("split_size")]
        if isinstance(requested, (list, tuple)) and len(requested) in (1, len(sizes)):
            followed = call.follow_sizes(requested, [inner] * len(requested))  # declared sizes learn what they measure
            # split(x, (4, 4)) or split(x, 4): constants count each part's channels (chunk's computed size does not)
            written = len(requested) > 1 or call.written_sizes(requested)[0]
            if written and not all(followed):
                space.mark(inner, STRUCTURED, f"split at constant sizes by {call.name}")
        return [inner] * len(sizes)
    offsets, acc = [], 0
    for size in sizes[:-1]:
        acc += size
        offsets.append(acc)
    pieces = space.cut(expr, offsets)
    # torch.split(x, [self.dim_conv, self.dim_untouched]): followed sizes are not written in code; a
    # constant size counts its part's channels, even where the part is made of existing pieces (a cat's)
    followed = call.follow_sizes(requested, pieces) if isinstance(requested, (list, tuple)) and \
        len(requested) == len(pieces) else [False] * len(pieces)
    for piece, traced in zip(pieces, followed):
        if not traced:
            space.mark(piece, STRUCTURED, f"split at constant offsets by {call.name}")
    return pieces


def split(call: OpCall) -> None:
    source = call.arg("self")
    dim = norm_dim(call.arg("dim", 0), source.ndim)
    sizes = [out.shape[dim] for out in call.outputs]
    pieces = _split_parts(call, source, dim, sizes)
    dims = call.dims(source)
    for out, piece in zip(call.outputs, pieces):
        result = list(dims)
        result[dim] = piece
        call.set(out, result)


def unbind(call: OpCall) -> None:
    source = call.arg("self")
    dim = norm_dim(call.arg("dim", 0), source.ndim)
    dims = call.dims(source)
    # the code takes a fixed number of tensors (q, k, v = x.unbind(0)): no hint may unlock their count
    call.space.mark(dims[dim], FROZEN | PARTS, "unbound into separate tensors")
    for out in call.outputs:
        call.set(out, dims[:dim] + dims[dim + 1:])


def select(call: OpCall) -> None:
    source = call.arg("self")
    dim = norm_dim(call.arg("dim"), source.ndim)
    dims = call.dims(source)
    call.freeze(dims[dim], "a fixed position is selected")
    call.set(call.outputs[0], dims[:dim] + dims[dim + 1:])


def slice_(call: OpCall) -> None:
    source = call.arg("self")
    out = call.outputs[0]
    dim = norm_dim(call.arg("dim", 0), source.ndim)
    n = source.shape[dim]
    start = call.arg("start", 0)
    end = call.arg("end", n)
    step = call.arg("step", 1)
    start = max(0, min(n, start + n if start < 0 else start))
    end = max(start, min(n, end + n if end < 0 else end))
    dims = call.dims(source)
    if start == 0 and end == n and step == 1:
        call.set(out, dims)
        return
    if end == start:  # an empty slice (``x[..., n:]``) holds no channel of the source
        call.set(out, dims[:dim] + [Cat(())] + dims[dim + 1:])
        return
    space = call.space
    given = (call.arg("start", 0), call.arg("end", n))
    # bounds Python computed from a traced size restructure the dim first, and follow pruning
    traced = [isinstance(b, int) and call.traced_sizes([b])[0] for b in given]
    first_new = len(space.atoms)
    try:
        pieces = space.cut(dims[dim], [start, end])
        before = [pieces[0]] if start > 0 else []
        middle = pieces[len(before)]
        after = pieces[len(before) + 1:]
        # A constant bound counts the channels on one side of it: pruning any of them would move
        # what the slice selects, even where the bound falls on an existing boundary (heads, groups).
        counted: List[Expr] = []
        if start > 0 and not traced[0]:
            counted += [middle] + after if given[0] < 0 else before
        if end < n and not traced[1]:
            counted += after if given[1] < 0 else before + [middle]
        for piece in counted:
            space.mark(piece, STRUCTURED, "sliced at constant offsets")
        if step > 1:
            length = end - start
            if length % step:
                raise DimError("strided slice does not divide the range")
            kept, stride = space.split_factor(middle, length // step)
            space.freeze(stride, "strided slice")
            middle = kept
    except DimError as exc:
        note = f"sliced in a way that does not follow the channel structure ({exc})"
        space.freeze(dims[dim], note)
        middle = space.frozen(out.shape[dim], note)
    _mark_new(call, first_new, "sliced at constant offsets")
    result = list(dims)
    result[dim] = middle
    call.set(out, result)


def index(call: OpCall) -> None:
    """Advanced indexing ``x[idx0, idx1, ...]``: indexed dims are frozen, index dims appear."""
    source = call.arg("self")
    indices: List[Optional[torch.Tensor]] = list(call.arg("indices"))
    out = call.outputs[0]
    present = [i for i, t in enumerate(indices) if t is not None]
    if any(indices[i].dtype == torch.bool for i in present):
        raise DataDependentDimError("boolean mask indexing has a data-dependent shape")
    dims = call.dims(source)
    for i in present:
        _freeze_indexed(call, dims[i], indices[i], source.shape[i])
    index_tensors = [indices[i] for i in present]
    bshape = torch.broadcast_shapes(*[t.shape for t in index_tensors])
    index_dims = broadcast_into(call, bshape, index_tensors)
    adjacent = present == list(range(present[0], present[-1] + 1))
    rest_before = dims[:present[0]] if adjacent else []
    rest_after = [d for i, d in enumerate(dims) if i not in present and (not adjacent or i > present[-1])]
    result = rest_before + index_dims + rest_after
    if len(result) != out.ndim:
        raise DimError("unexpected shape from advanced indexing")
    call.set(out, result)


def _freeze_indexed(call: OpCall, dim: Expr, positions: torch.Tensor, n: int) -> None:
    """Freeze the channels an index tensor reads: all of them, or only the end pieces it stays in.

    Indices counted from the end (``x[..., [-2], :]``: the key row after the query heads) that all
    fall in trailing pieces of a concatenated dimension still read the same rows when the pieces
    before them shrink; indices from the start that fall in leading pieces, likewise. Only those
    pieces are frozen then.
    """
    expr = resolve(dim)
    values = positions.flatten().tolist() if positions.numel() <= 64 and not positions.is_floating_point() else None
    if type(expr) is not Cat or not values:
        call.freeze(dim, "indexed by a tensor")
        return
    sizes = [current_size(part) for part in expr.parts]
    if all(v < 0 for v in values):  # the trailing pieces that hold every index
        reach, count = -min(values), 0
        while sum(sizes[len(sizes) - count:]) < reach:
            count += 1
        touched = expr.parts[len(sizes) - count:]
    elif all(v >= 0 for v in values):
        reach, count = max(values) + 1, 0
        while sum(sizes[:count]) < reach:
            count += 1
        touched = expr.parts[:count]
    else:
        touched, reach = expr.parts, 0
    if len(touched) == len(expr.parts) or reach > n:
        call.freeze(dim, "indexed by a tensor")
        return
    for part in touched:
        call.freeze(part, "indexed by a tensor")


def index_select(call: OpCall) -> None:
    source = call.arg("self")
    dim = norm_dim(call.arg("dim"), source.ndim)
    dims = call.dims(source)
    call.freeze(dims[dim], "indexed by index_select")
    result = list(dims)
    result[dim] = call.dims(call.arg("index"))[0] if call.arg("index").ndim else ONE
    call.set(call.outputs[0], result)


def gather(call: OpCall) -> None:
    source, index_t = call.arg("self"), call.arg("index")
    dim = norm_dim(call.arg("dim"), source.ndim)
    dims = call.dims(source)
    idims = call.dims(index_t)
    call.freeze(dims[dim], "indexed by gather")
    for d in range(source.ndim):
        if d != dim and source.shape[d] == index_t.shape[d]:
            call.unify(dims[d], idims[d])
    call.set(call.outputs[0], idims)


def scatter(call: OpCall) -> None:
    source = call.arg("self")
    dim = norm_dim(call.arg("dim"), source.ndim)
    dims = call.dims(source)
    call.freeze(dims[dim], f"written by {call.name}")
    for name in ("index", "src"):
        other = call.arg(name)
        if isinstance(other, torch.Tensor) and other.ndim == source.ndim:
            odims = call.dims(other)
            for d in range(source.ndim):
                if d != dim and other.shape[d] == source.shape[d]:
                    call.unify(dims[d], odims[d])
                elif d != dim:
                    call.freeze(odims[d], f"partial write by {call.name}")
    call.set(call.outputs[0], dims)


def index_write(call: OpCall) -> None:
    """index_add/index_copy/index_fill: rows of ``self`` along ``dim`` are written at indices."""
    target = call.arg("self")
    dim = norm_dim(call.arg("dim"), max(target.ndim, 1))
    dims = call.dims(target)
    if target.ndim:
        call.freeze(dims[dim], f"written at indices by {call.name}")
    source = call.arg("source")
    if isinstance(source, torch.Tensor) and source.ndim == target.ndim and source.ndim:
        sdims = call.dims(source)
        call.freeze(sdims[dim], f"rows written at indices by {call.name}")
        for d in range(target.ndim):
            if d != dim:
                call.unify(dims[d], sdims[d])
    call.set(call.outputs[0], dims)


def index_put(call: OpCall) -> None:
    source = call.arg("self")
    dims = call.dims(source)
    for i, t in enumerate(call.arg("indices")):
        if t is not None and i < len(dims):
            call.freeze(dims[i], "written at tensor indices")
    values = call.arg("values")
    for expr in call.dims(values):
        call.freeze(expr, "values written at tensor indices")
    call.set(call.outputs[0], dims)


def embedding(call: OpCall) -> None:
    weight, indices = call.arg("weight"), call.arg("indices")
    wdims = call.dims(weight)
    call.freeze(wdims[0], "embedding rows are looked up by index")
    call.set(call.outputs[0], call.dims(indices) + [wdims[1]])


def sort_like(call: OpCall) -> None:
    """sort/topk/argsort: positions along ``dim`` are reordered, so that dim is frozen."""
    source = call.arg("self")
    dim = norm_dim(call.arg("dim", -1), max(source.ndim, 1))
    dims = call.dims(source)
    if source.ndim:
        call.freeze(dims[dim], f"reordered by {call.name}")
    for out in call.outputs:
        result = list(dims)
        if source.ndim and out.shape[dim] != source.shape[dim]:
            result[dim] = call.space.frozen(out.shape[dim], f"top-k size in {call.name}")
        call.set(out, result)


@hookimpl
def register_op_rules():
    return specs({
        "aten::cat": cat,
        "aten::concat": cat,
        "aten::stack": stack,
        "aten::split": split,
        "aten::split_with_sizes": split,
        "aten::unsafe_split": split,
        "aten::unsafe_split_with_sizes": split,
        "aten::unbind": unbind,
        "aten::select": select,
        "aten::slice": slice_,
        "aten::index": index,
        "aten::_unsafe_index": index,
        "aten::index_select": index_select,
        "aten::gather": gather,
        "aten::scatter": scatter,
        "aten::scatter_": scatter,
        "aten::scatter_add": scatter,
        "aten::scatter_add_": scatter,
        "aten::scatter_reduce": scatter,
        "aten::index_add": index_write,
        "aten::index_add_": index_write,
        "aten::index_copy": index_write,
        "aten::index_copy_": index_write,
        "aten::index_fill": index_write,
        "aten::index_fill_": index_write,
        "aten::index_put": index_put,
        "aten::index_put_": index_put,
        "aten::_index_put_impl_": index_put,
        "aten::embedding": embedding,
        "aten::sort": sort_like,
        "aten::topk": sort_like,
        "aten::argsort": sort_like,
    })


__all__ = ["register_op_rules"]
