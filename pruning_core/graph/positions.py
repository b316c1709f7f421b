"""Positions of an atom's channels inside a dimension expression.

A resolved expression lists positions row-major (products) and part by part
(concatenations); these functions say, for each position, which element of a given
atom it belongs to, which is how a selection of channels becomes the indices a
layer handler removes.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from .expr import Atom, Cat, Expr, current_size, leaves


def contains(expr: Expr, target: Atom) -> bool:
    """Whether ``target`` is a leaf of the resolved expression ``expr`` (cached per expression)."""
    if type(expr) is Atom:
        return expr is target
    if expr._leafset is None:
        expr._leafset = frozenset(leaves(expr))
    return target in expr._leafset


def coords(expr: Expr, target: Atom) -> torch.Tensor:
    """For each current position of resolved ``expr``, its current coordinate along ``target`` (or -1)."""
    kind = type(expr)
    if kind is Atom:
        n = expr.current_size
        if expr is target:
            return torch.arange(n)
        return torch.full((n,), -1, dtype=torch.long)
    if kind is Cat:
        pieces: List[torch.Tensor] = []
        gap = 0  # positions of parts without the target, emitted as one run of -1
        for part in expr.parts:
            if contains(part, target):
                if gap:
                    pieces.append(torch.full((gap,), -1, dtype=torch.long))
                    gap = 0
                pieces.append(coords(part, target))
            else:
                gap += current_size(part)
        if gap or not pieces:
            pieces.append(torch.full((gap,), -1, dtype=torch.long))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    sizes = [current_size(f) for f in expr.factors]
    for index, factor in enumerate(expr.factors):
        if contains(factor, target):
            inner = coords(factor, target)
            shape = [1] * len(sizes)
            shape[index] = sizes[index]
            return inner.view(shape).expand(sizes).reshape(-1)
    return torch.full((math.prod(sizes),), -1, dtype=torch.long)


def atom_offsets(expr: Expr, target: Atom) -> Optional[List[int]]:
    """Where ``target`` sits in ``expr`` when it appears only as whole parts of a concatenation
    (or is the expression itself): the current offsets of those parts. ``None`` otherwise."""
    if expr is target:
        return [0]
    if type(expr) is not Cat:
        return None
    offsets: List[int] = []
    offset = 0
    for part in expr.parts:
        if part is target:
            offsets.append(offset)
        elif contains(part, target):
            return None
        offset += current_size(part)
    return offsets
