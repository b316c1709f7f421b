"""Symbolic channel dimensions: the algebra behind the dependency graph.

Every tensor dimension, every module channel slot and every parameter dimension
seen during tracing is described by a *dimension expression*:

* an :class:`Atom`, an indivisible dimension of some size; atoms unified by an
  operator (the two operands of a residual add, a conv's output and the
  following BatchNorm) are merged with union-find, so they are one atom;
* a :class:`Prod` of expressions, row-major, as produced by ``view`` and
  ``flatten`` (``C*H*W`` is ``Prod(C, H, W)``; heads are ``Prod(H, D)``);
* a :class:`Cat` of expressions, as produced by ``cat`` and ``split``.

When two expressions must describe the same index space, :meth:`DimSpace.unify`
refines atoms into products or concatenations until both sides line up. A
*group* of coupled channels is then exactly one leaf atom: removing element
``i`` of the atom removes, in every slot containing it, the positions whose
coordinate along that atom is ``i``. Row-major products make this precise for
flatten (a channel owns ``H*W`` positions), heads (removing a head removes all
its dimensions) and channel shuffles.

Atoms carry flags saying whether pruning them is allowed:

* ``FROZEN``: the size is fixed: by data (model inputs, outputs, indexing), by
  an ignored layer, or by a structure that keeps whole heads or head dims.
* ``STRUCTURED``: the size is written in code (a ``view`` into heads, a
  constant split); prunable only when a hint unlocks it (``UNLOCKED``).
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch

FROZEN = 1
STRUCTURED = 2
UNLOCKED = 4


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
        return not (flags & FROZEN) and (not (flags & STRUCTURED) or bool(flags & UNLOCKED)) and self.size > 1

    @property
    def current_size(self) -> int:
        return self.size if self.alive is None else int(self.alive.sum())

    def __repr__(self) -> str:
        tags = "".join(t for f, t in ((FROZEN, "F"), (STRUCTURED, "S"), (UNLOCKED, "U")) if self.flags & f)
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


class DimSpace:
    """Creates atoms and keeps expressions consistent under unification."""

    def __init__(self) -> None:
        self.atoms: List[Atom] = []

    # -- creation -------------------------------------------------------------
    def atom(self, size: int, flags: int = 0, note: Optional[str] = None) -> Expr:
        """A fresh atom, or :data:`ONE` for size 1."""
        if size == 1:
            return ONE
        created = Atom(len(self.atoms), int(size), flags, note)
        self.atoms.append(created)
        return created

    def frozen(self, size: int, note: str) -> Expr:
        return self.atom(size, FROZEN, note)

    def structured(self, size: int, note: str) -> Expr:
        return self.atom(size, STRUCTURED, note)

    # -- flags ----------------------------------------------------------------
    def mark(self, expr: Expr, flags: int, note: Optional[str] = None) -> None:
        """Set ``flags`` on every leaf atom of ``expr``."""
        for leaf in leaves(expr):
            leaf.flags |= flags
            if note and len(leaf.notes) < 4 and note not in leaf.notes:
                leaf.notes.append(note)

    def freeze(self, expr: Expr, note: str) -> None:
        self.mark(expr, FROZEN, note)

    # -- unification ------------------------------------------------------------
    def unify(self, a: Expr, b: Expr) -> None:
        """Make ``a`` and ``b`` the same index space, refining atoms as needed.

        Raises :class:`DimError` when their structures cannot be reconciled
        (different sizes, or products that do not nest); the caller freezes.
        """
        a, b = resolve(a), resolve(b)
        if _same(a, b):
            return
        if a.size != b.size:
            raise DimError(f"size mismatch {a.size} vs {b.size}")
        ta, tb = type(a), type(b)
        if ta is Atom and tb is Atom:
            self._union(a, b)
        elif ta is Atom:
            self._define(a, b)
        elif tb is Atom:
            self._define(b, a)
        elif ta is Prod and tb is Prod:
            self._unify_prod(list(a.factors), list(b.factors))
        else:
            self._unify_cat(a, b)

    def _union(self, a: Atom, b: Atom) -> None:
        if a.serial > b.serial:
            a, b = b, a
        b.parent = a
        a.flags |= b.flags
        for note in b.notes:
            if len(a.notes) < 4 and note not in a.notes:
                a.notes.append(note)
        if b.definition is not None:
            if a.definition is None:
                a.definition = b.definition
                self._push_flags(a)
            else:
                self.unify(a.definition, b.definition)
                self._push_flags(a)
        elif a.definition is not None:
            self._push_flags(a)

    def _push_flags(self, root: Atom) -> None:
        if root.definition is not None and root.flags & (FROZEN | STRUCTURED):
            self.mark(root.definition, root.flags & (FROZEN | STRUCTURED), root.notes[0] if root.notes else None)

    def _define(self, atom: Atom, expr: Expr) -> None:
        if any(leaf is atom for leaf in leaves(expr)):
            raise DimError("an atom cannot contain itself")
        atom.definition = expr
        self._push_flags(atom)

    def _unify_prod(self, fa: List[Expr], fb: List[Expr]) -> None:
        i = j = 0
        while i < len(fa) and j < len(fb):
            x, y = resolve(fa[i]), resolve(fb[j])
            if x.size == 1:
                i += 1
                continue
            if y.size == 1:
                j += 1
                continue
            if x.size == y.size:
                self.unify(x, y)
                i += 1
                j += 1
            elif x.size < y.size:
                if y.size % x.size:
                    raise DimError("products do not nest")
                outer, inner = self.split_factor(y, x.size)
                self.unify(x, outer)
                fb[j] = inner
                i += 1
            else:
                if x.size % y.size:
                    raise DimError("products do not nest")
                outer, inner = self.split_factor(x, y.size)
                self.unify(outer, y)
                fa[i] = inner
                j += 1

    def _unify_cat(self, a: Expr, b: Expr) -> None:
        cuts = sorted(set(_offsets(a)) | set(_offsets(b)))
        pieces_a = self.cut(a, cuts)
        pieces_b = self.cut(b, cuts)
        for x, y in zip(pieces_a, pieces_b):
            self.unify(x, y)

    # -- refinement -------------------------------------------------------------
    def cut(self, expr: Expr, cuts: Iterable[int]) -> List[Expr]:
        """Split ``expr`` at the given interior offsets into consecutive pieces."""
        pieces: List[Expr] = []
        rest = resolve(expr)
        start = 0
        for cut in sorted(set(cuts)):
            if cut <= start or cut >= start + rest.size:
                continue
            left, rest = self.split_at(rest, cut - start)
            pieces.append(left)
            start = cut
        pieces.append(rest)
        return pieces

    def split_at(self, expr: Expr, k: int) -> Tuple[Expr, Expr]:
        """``expr`` as ``Cat(left, right)`` with ``left.size == k``."""
        expr = resolve(expr)
        n = expr.size
        if not 0 < k < n:
            raise DimError(f"cannot split {n} at {k}")
        kind = type(expr)
        if kind is Atom:
            left = self.atom(k, expr.flags & (FROZEN | STRUCTURED))
            right = self.atom(n - k, expr.flags & (FROZEN | STRUCTURED))
            if expr.notes:
                self.mark(Cat((left, right)), 0, expr.notes[0])
            self._define(expr, Cat((left, right)))
            return left, right
        if kind is Cat:
            offset = 0
            for index, part in enumerate(expr.parts):
                if offset == k:
                    return resolve(Cat(expr.parts[:index])), resolve(Cat(expr.parts[index:]))
                if offset < k < offset + part.size:
                    pl, pr = self.split_at(part, k - offset)
                    return (resolve(Cat(expr.parts[:index] + (pl,))),
                            resolve(Cat((pr,) + expr.parts[index + 1:])))
                offset += part.size
            raise DimError("split offset outside concatenation")
        head, tail = expr.factors[0], expr.factors[1:]
        inner = n // head.size
        if k % inner:
            raise DimError(f"cannot split product {expr!r} at {k}")
        hl, hr = self.split_at(head, k // inner)
        return resolve(Prod((hl,) + tail)), resolve(Prod((hr,) + tail))

    def split_factor(self, expr: Expr, outer_size: int) -> Tuple[Expr, Expr]:
        """``expr`` as ``Prod(outer, inner)`` with ``outer.size == outer_size``."""
        expr = resolve(expr)
        n = expr.size
        if outer_size <= 0 or n % outer_size:
            raise DimError(f"{n} is not divisible by {outer_size}")
        if outer_size == 1:
            return ONE, expr
        if outer_size == n:
            return expr, ONE
        inner_size = n // outer_size
        kind = type(expr)
        if kind is Atom:
            flags = expr.flags & (FROZEN | STRUCTURED)
            outer = self.atom(outer_size, flags)
            inner = self.atom(inner_size, flags)
            self._define(expr, Prod((outer, inner)))
            return outer, inner
        if kind is Prod:
            acc = 1
            factors = expr.factors
            for index, factor in enumerate(factors):
                if acc == outer_size:
                    return resolve(Prod(factors[:index])), resolve(Prod(factors[index:]))
                if acc * factor.size > outer_size:
                    if outer_size % acc:
                        raise DimError("reshape does not follow the product structure")
                    fo, fi = self.split_factor(factor, outer_size // acc)
                    return resolve(Prod(factors[:index] + (fo,))), resolve(Prod((fi,) + factors[index + 1:]))
                acc *= factor.size
            raise DimError("reshape does not follow the product structure")
        # Cat: every part must consist of whole rows of the inner dimension,
        # and all rows are the same inner space.
        outers: List[Expr] = []
        inner: Optional[Expr] = None
        for part in expr.parts:
            if part.size % inner_size:
                raise DimError("concatenation parts do not align with the reshape")
            po, pi = self.split_factor(part, part.size // inner_size)
            outers.append(po)
            if inner is None:
                inner = pi
            else:
                self.unify(inner, pi)
        outer = resolve(Cat(outers)) if len(outers) > 1 else outers[0]
        return outer, resolve(inner)

    # -- queries after tracing ----------------------------------------------------
    def leaf_atoms(self) -> List[Atom]:
        """Every current leaf atom (a root without definition)."""
        return [a for a in self.atoms if a.parent is None and a.definition is None]


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
