"""Building blocks for op rules: broadcasting, shape-preserving ops and dim helpers.

These helpers know tensor semantics (broadcasting, dimension lists), never
concrete layers. Built-in and third-party op rules are written with them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from .dims import ONE, Expr
from .trace import OpCall, iter_tensors


def norm_dim(dim: int, ndim: int) -> int:
    """A dimension index in ``range(ndim)`` (accepts negatives; 0-d tensors use 0)."""
    return dim % ndim if ndim else 0


def norm_dims(dims: Optional[Sequence[int]], ndim: int) -> List[int]:
    if dims is None:
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({norm_dim(d, ndim) for d in dims})


def broadcast_into(call: OpCall, out: Union[torch.Tensor, Sequence[int]], operands: Sequence[torch.Tensor]) -> List[Expr]:
    """Dims of ``out`` (a tensor or a shape) under numpy broadcasting of ``operands``.

    Equal non-1 dimensions of the operands are unified.
    """
    result: List[Expr] = []
    operand_dims = [(t, call.dims(t)) for t in operands]
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else tuple(out)
    ndim = len(shape)
    for pos in range(ndim):
        size = shape[pos]
        if size == 1:
            result.append(ONE)
            continue
        offset_from_right = ndim - pos
        chosen: Optional[Expr] = None
        for tensor, dims in operand_dims:
            index = tensor.ndim - offset_from_right
            if index < 0 or tensor.shape[index] != size:
                continue
            if chosen is None:
                chosen = dims[index]
            else:
                call.unify(chosen, dims[index])
        result.append(chosen if chosen is not None else call.new(size, note=f"broadcast in {call.name}"))
    return result


def tensor_args(call: OpCall) -> List[torch.Tensor]:
    return [t for t in iter_tensors(call.args)] + [t for t in iter_tensors(list(call.kwargs.values()))]


def pointwise(call: OpCall) -> None:
    """Element-wise operators: every output broadcasts all tensor inputs."""
    operands = tensor_args(call)
    for out in call.outputs:
        call.set(out, broadcast_into(call, out, operands))


def same_as_first(call: OpCall) -> None:
    """Operators whose outputs have exactly the first input's dimensions (copies, softmax)."""
    source = tensor_args(call)[0]
    for out in call.outputs:
        if out.shape == source.shape:
            call.set(out, call.dims(source))
        else:
            call.set(out, broadcast_into(call, out, [source]))


def reduce_dims(call: OpCall, source: torch.Tensor, reduced: Sequence[int], keepdim: bool) -> List[Expr]:
    """Dims left after reducing ``reduced`` dims of ``source``."""
    dims = call.dims(source)
    out: List[Expr] = []
    for index, expr in enumerate(dims):
        if index in reduced:
            if keepdim:
                out.append(ONE)
        else:
            out.append(expr)
    return out
