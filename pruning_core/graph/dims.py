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
* ``OUTPUT``: the channels reach a model output; kept by pruners and
  ``get_all_groups``, pruned only when a user asks for them explicitly.
* ``STRUCTURED``: the size is written in code (a ``view`` into heads, a
  constant split); prunable only when a hint unlocks it (``UNLOCKED``).
* ``PARTS`` (with ``FROZEN``): the number of tensors the code unpacks (``q, k, v = x.unbind(0)``,
  ``a, b = x.chunk(2)``); a structure hint never takes it for heads.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from .expr import (FROZEN, ONE, OUTPUT, PARTS, STICKY, STRUCTURED, UNLOCKED, Atom, Cat, DataDependentDimError,
                   DimError, Expr, Prod, _offsets, _same, current_size, leaves, resolve)

__all__ = ["FROZEN", "STRUCTURED", "UNLOCKED", "OUTPUT", "PARTS", "ONE", "Atom", "Prod", "Cat", "Expr", "DimError",
           "DataDependentDimError", "DimSpace", "resolve", "leaves", "current_size"]


class DimSpace:
    """Creates atoms and keeps expressions consistent under unification."""

    def __init__(self) -> None:
        self.atoms: List[Atom] = []
        # (expression, multiple): widths an operator needs to stay a multiple of (aligned kernels)
        self.multiples: List[Tuple[Expr, int]] = []

    def require_multiple(self, expr: Expr, multiple: int) -> None:
        """Pruning must keep the channels of ``expr`` a multiple of ``multiple`` (the nearest one)."""
        if multiple > 1 and expr.size % multiple == 0:
            self.multiples.append((expr, multiple))

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
            newly_blocked = bool(flags & (FROZEN | OUTPUT)) and not leaf.flags & (FROZEN | OUTPUT)
            leaf.flags |= flags
            if note and note not in leaf.notes:
                if newly_blocked:  # the note that first blocks it (frozen, or a model output) is shown first
                    leaf.notes.insert(0, note)
                    del leaf.notes[4:]
                elif len(leaf.notes) < 4:
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
        if root.definition is not None and root.flags & STICKY:
            self.mark(root.definition, root.flags & STICKY, root.notes[0] if root.notes else None)

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
            left = self.atom(k, expr.flags & STICKY)
            right = self.atom(n - k, expr.flags & STICKY)
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
            flags = expr.flags & STICKY
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
