"""Dimension expressions: atoms, row-major products and concatenations, and their canonical form.

See :mod:`pruning_core.graph.dims` for what they describe and how they are unified.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch

FROZEN = 1
STRUCTURED = 2
UNLOCKED = 4
OUTPUT = 8  # reaches a model output: kept unless a user asks for these channels explicitly
PARTS = 16  # a count of tensors the code unpacks (q, k, v = x.unbind(0)): never heads, never channels
STICKY = FROZEN | STRUCTURED | OUTPUT | PARTS  # flags that the parts of a split atom inherit


class DimError(Exception):
    """Two expressions cannot be made to describe the same index space."""


class DataDependentDimError(DimError):
    """An op's output size depends on the values in its input (a boolean mask), not on its shapes."""


class Atom:
    """An indivisible dimension; union-find node."""

    __slots__ = ("serial", "size", "parent", "flags", "definition", "notes", "alive")

    def __init__(self, serial: int, size: int, flags: int = 0, note: Optional[str] = None) -> None:
        self.serial = serial
        self.size = size
        self.parent: Optional[Atom] = None
        self.flags = flags
        self.definition: Optional[Expr] = None
        self.notes: List[str] = [note] if note else []
        self.alive: Optional[torch.Tensor] = None  # set once pruning starts

    def find(self) -> "Atom":
        root = self
        while root.parent is not None:
            root = root.parent
        node = self
        while node.parent is not None and node.parent is not root:
            node.parent, node = root, node.parent
        return root

    @property
    def prunable(self) -> bool:
        flags = self.flags
        return not (flags & (FROZEN | OUTPUT)) and (not (flags & STRUCTURED) or bool(flags & UNLOCKED)) \
            and self.size > 1

    @property
    def prunable_on_request(self) -> bool:
        """Prunable when a user names these channels explicitly (model outputs included)."""
        flags = self.flags
        return not (flags & FROZEN) and (not (flags & STRUCTURED) or bool(flags & UNLOCKED)) and self.size > 1

    @property
    def current_size(self) -> int:
        return self.size if self.alive is None else int(self.alive.sum())

    def __repr__(self) -> str:
        tags = "".join(t for f, t in ((FROZEN, "F"), (STRUCTURED, "S"), (UNLOCKED, "U"), (OUTPUT, "O"))
                       if self.flags & f)
        return f"a{self.serial}[{self.size}{':' + tags if tags else ''}]"


class Prod:
    """Row-major product of expressions: the first factor is the outermost."""

    __slots__ = ("factors", "size", "_leafset")

    def __init__(self, factors: Sequence["Expr"]) -> None:
        self.factors = tuple(factors)
        self.size = math.prod(f.size for f in self.factors)
        self._leafset: Optional[frozenset] = None

    def __repr__(self) -> str:
        return "(" + "*".join(map(repr, self.factors)) + ")" if self.factors else "1"


class Cat:
    """Concatenation of expressions, in order."""

    __slots__ = ("parts", "size", "_leafset")

    def __init__(self, parts: Sequence["Expr"]) -> None:
        self.parts = tuple(parts)
        self.size = sum(p.size for p in self.parts)
        self._leafset: Optional[frozenset] = None

    def __repr__(self) -> str:
        return "[" + "|".join(map(repr, self.parts)) + "]"


Expr = Union[Atom, Prod, Cat]
ONE = Prod(())


def resolve(expr: Expr) -> Expr:
    """Canonical form: atoms replaced by their roots or definitions, nesting flattened."""
    kind = type(expr)
    if kind is Atom:
        root = expr.find()
        if root.definition is not None:
            return resolve(root.definition)
        return root
    if kind is Prod:
        factors: List[Expr] = []
        for factor in expr.factors:
            factor = resolve(factor)
            if type(factor) is Prod:
                factors.extend(factor.factors)
            elif factor.size != 1:
                factors.append(factor)
        if not factors:
            return ONE
        return factors[0] if len(factors) == 1 else Prod(factors)
    parts: List[Expr] = []
    for part in expr.parts:
        part = resolve(part)
        if type(part) is Cat:
            parts.extend(part.parts)
        elif part.size != 0:
            parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return Cat(parts)


def leaves(expr: Expr) -> List[Atom]:
    """The leaf atoms of ``expr``, in order of appearance, with repeats."""
    out: List[Atom] = []
    stack = [resolve(expr)]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is Atom:
            out.append(node)
        elif kind is Prod:
            stack.extend(reversed(node.factors))
        else:
            stack.extend(reversed(node.parts))
    return out


def _same(a: Expr, b: Expr) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or a.size != b.size:
        return False
    if type(a) is Atom:
        return False
    ca = a.factors if type(a) is Prod else a.parts
    cb = b.factors if type(b) is Prod else b.parts
    return len(ca) == len(cb) and all(_same(x, y) for x, y in zip(ca, cb))


def _offsets(expr: Expr) -> List[int]:
    expr = resolve(expr)
    if type(expr) is not Cat:
        return []
    out, acc = [], 0
    for part in expr.parts[:-1]:
        acc += part.size
        out.append(acc)
    return out


def current_size(expr: Expr) -> int:
    """Size of a resolved expression after the pruning applied so far."""
    kind = type(expr)
    if kind is Atom:
        return expr.current_size
    if kind is Prod:
        return math.prod(current_size(f) for f in expr.factors)
    return sum(current_size(p) for p in expr.parts)
