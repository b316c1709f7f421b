"""Declared channel structure (heads, equal blocks) and protection of a traced graph's channels."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from torch import nn

from ..errors import ConfigurationError
from .build import TracedModel
from .dims import FROZEN, OUTPUT, PARTS, UNLOCKED, Atom, Cat, DimError, Prod, current_size, leaves, resolve
from .index import ChannelIndex
from .lookup import SlotLookup


class ChannelStructure:
    """``channel_structure``, ``set_channel_structure`` and ``protect``.

    Declaring structure refines atoms, so it calls ``invalidate`` to have the index rebuilt.
    """

    def __init__(self, traced: TracedModel, index: Callable[[], ChannelIndex], slots: SlotLookup,
                 invalidate: Callable[[], None]) -> None:
        self.traced = traced
        self._index = index
        self.slots = slots
        self._invalidate = invalidate
        self.head_atoms: Set[Atom] = set()
        # module id -> (module, what counts its heads: a group atom, or None for one head), as declared
        self._heads: Dict[int, Tuple[nn.Module, Optional[Any]]] = {}

    def channel_structure(self, name: str, side: str = "out") -> List[int]:
        """Current sizes of the product factors of a layer's channels, outermost first.

        For a projection viewed as heads this is ``[heads, head_size]`` (or
        ``[kv_heads, queries_per_kv, head_size]`` with grouped-query attention, or
        ``[3, heads, head_size]`` for a fused qkv); a plain layer gives ``[channels]``.
        """
        module = self.traced.lookup.get(name)
        if module is None:
            raise ConfigurationError(f"no module named {name!r} in the traced model")
        expr = self._index().expr(self.slots.channel_slot(module, side))
        if type(expr) is Cat:  # q, k and v joined by a concatenated bias: report them like a fused [3, ...]
            shapes = [self._factor_sizes(part) for part in expr.parts]
            if all(shape == shapes[0] for shape in shapes):
                return [len(shapes)] + shapes[0]
        return self._factor_sizes(expr)

    def channel_parts(self, name: str, side: str = "out") -> List[List[int]]:
        """:meth:`channel_structure` of each concatenated part of a layer's channels, one list when not joined.

        A fused projection with fewer key/value heads (``[q: heads x size | k: kv x size | v: kv x size]``,
        cut apart by slices or a split) gives one list per part, since its parts differ in size.
        """
        module = self.traced.lookup.get(name)
        if module is None:
            raise ConfigurationError(f"no module named {name!r} in the traced model")
        expr = resolve(self._index().expr(self.slots.channel_slot(module, side)))
        return [self._factor_sizes(part) for part in expr.parts] if type(expr) is Cat else [self._factor_sizes(expr)]

    @staticmethod
    def _factor_sizes(expr: Any) -> List[int]:
        expr = resolve(expr)
        factors = expr.factors if type(expr) is Prod else (expr,)
        return [current_size(f) for f in factors]

    # -- structure hints ------------------------------------------------------------
    def set_channel_structure(self, module: nn.Module, groups: int, side: str = "out",
                              prunable_groups: bool = False, prunable_within: bool = True,
                              group_size: Optional[int] = None) -> bool:
        """Declare that a module's channels on ``side`` are ``groups`` equal blocks (heads).

        Whole blocks become prunable if ``prunable_groups``; positions inside
        the blocks (the same in every block) if ``prunable_within``. When the
        channels are equal parts joined by a concatenation (q, k and v), the
        blocks are declared in each part. Returns whether the structure could
        be applied.
        """
        slot = self.slots.channel_slot(module, side)
        space = self.traced.recorder.space
        expr = resolve(slot.expr)
        if groups == 1:  # one head: nothing to remove whole; its dims may still be pruned alike
            applied = self._single_block(expr, slot.describe(), prunable_within, group_size)
            if applied and side == "out":
                self._heads[id(module)] = (module, None)
            return applied
        found = _find_group_factor(expr, groups, group_size)
        pairs = [found] if found is not None else []
        if not pairs and type(expr) is Cat and len({current_size(part) for part in expr.parts}) == 1:
            # Equal parts joined (q, k and v by a concatenated bias): the heads are in each part.
            parts = [_find_group_factor(resolve(part), groups, group_size) for part in expr.parts]
            pairs = parts if all(p is not None for p in parts) else []
        if not pairs and type(expr) is Cat:
            pairs = _unequal_parts(expr, groups, group_size)
        if not pairs:
            try:
                atoms = leaves(expr)
                if len(atoms) != 1:
                    return False
                pairs = [space.split_factor(atoms[0], groups)]
            except DimError:
                return False
        # What a structure keeps is frozen, so that a later, coarser structure on the same channels (a
        # block split in two halves, around heads) cannot unlock it again.
        for group_atom, inner in pairs:
            if prunable_groups:
                space.mark(group_atom, UNLOCKED)
                self.head_atoms.update(leaves(group_atom))
            else:
                space.mark(group_atom, FROZEN, f"{slot.describe()}: whole heads are kept")
            if prunable_within:
                space.mark(inner, UNLOCKED)
            else:
                space.mark(inner, FROZEN, f"{slot.describe()}: head dims are kept")
        if side == "out":
            self._heads[id(module)] = (module, pairs[0][0])
        self._invalidate()
        return True

    def head_counts(self) -> Dict[nn.Module, int]:
        """The current number of heads of every module whose output was declared as heads."""
        return {module: 1 if counter is None else current_size(resolve(counter))
                for module, counter in self._heads.values()}

    def _single_block(self, expr: Any, where: str, prunable_within: bool, group_size: Optional[int]) -> bool:
        """A structure of one block: the block's own dims (each part's, for q, k and v) follow ``prunable_within``."""
        parts = expr.parts if type(expr) is Cat and len({current_size(p) for p in expr.parts}) == 1 else (expr,)
        inners = []
        for part in parts:
            part = resolve(part)
            factors = part.factors if type(part) is Prod else (part,)
            size = 1
            for start in range(len(factors) - 1, -1, -1):  # the trailing factors that make one block
                size *= factors[start].size
                if group_size is None or size == group_size:
                    inners.append(resolve(Prod(factors[start:])))
                    break
            else:
                return False
        space = self.traced.recorder.space
        for inner in inners:
            if prunable_within:
                space.mark(inner, UNLOCKED)
            else:
                space.mark(inner, FROZEN, f"{where}: head dims are kept")
        self._invalidate()
        return True

    def protect(self, targets: Iterable[Any], reason: str = "ignored by the user") -> None:
        """Never prune the output channels of these modules (or the dims of these parameters)."""
        for target in targets:
            for slot in self.slots.protected_slots(target):
                self.traced.recorder.space.mark(slot.expr, FROZEN, reason)
        self._invalidate()

    def frozen_reasons(self) -> Dict[str, List[str]]:
        """For each slot with fixed channels, why they are fixed (for ``inspect``)."""
        index = self._index()
        out: Dict[str, List[str]] = {}
        for slot in self.traced.recorder.slots:
            notes: List[str] = []
            kept = [atom for atom in index.atoms_of(slot) if not atom.prunable]
            for atom in sorted(kept, key=_blocked_first):
                notes.extend(n for n in atom.notes if n not in notes)
            if notes:
                out[f"{slot.describe()} [{slot.kind}]"] = notes
        return out

    def freeze(self, atoms: Iterable[Atom], reason: str) -> None:
        """Never prune these atoms again (for example after they broke a verification pass)."""
        for atom in atoms:
            self.traced.recorder.space.freeze(atom, reason)
        self._invalidate()


def _blocked_first(atom: Atom) -> Tuple[bool, bool]:
    """Sort key for reasons: what blocks outright (frozen, a model output) before sizes written in code, which a
    hint can unlock; among the former, counts of unpacked parts (q, k, v) last: never channels, the least telling."""
    return not atom.flags & (FROZEN | OUTPUT), bool(atom.flags & PARTS)


def _unequal_parts(expr: Cat, groups: int, group_size: Optional[int]) -> List[Tuple[Any, Any]]:
    """Heads in the parts of unequal size of a fused projection (``[q | k | v]`` with fewer key/value heads).

    A part holds the heads when it is a product whose outer factors make ``groups``
    (key/value groups: each of q, k and v; multi-query: the query part only). The
    first part (the queries) must hold them; a part that is a single factor (the one
    key or value head of multi-query attention) is kept whole.
    With ``group_size``, the channels of one unit across the parts (a key/value group: its queries,
    key and value) must add up to it.
    """
    found = [_find_group_factor(resolve(part), groups, None, outer=True) for part in expr.parts]
    pairs = [pair for pair in found if pair is not None]
    if found[0] is None or (group_size is not None and sum(inner.size for _, inner in pairs) != group_size):
        return []
    return pairs


def _find_group_factor(expr: Any, groups: int, group_size: Optional[int],
                       outer: bool = False) -> Optional[Tuple[Any, Any]]:
    """In a product expression, a run of factors whose sizes multiply to ``groups``, and what follows it.

    With grouped-query attention the heads of a query projection are two
    factors (key/value heads times queries per key/value head). Counts of parts the code unpacks are
    tried last: with 3 heads, the q, k and v of a fused ``[3, heads, head_dim]`` also make 3.
    """
    if type(expr) is not Prod:
        return None
    factors = expr.factors
    # Exactly heads x group_size first; then a head holding several parts of that size (q, k and v
    # interleaved per head, ``[heads, 3, head_dim]``, as BLOOM and GPT-NeoX lay out their fused projection).
    for whole_multiple, with_parts in ((False, False), (True, False), (False, True), (True, True)):
        for start in range(len(factors)):
            product = 1
            for stop in range(start, len(factors)):
                if not with_parts and any(leaf.flags & PARTS for leaf in leaves(factors[stop])):
                    break
                product *= factors[stop].size
                if product == groups:
                    inner = resolve(Prod(factors[stop + 1:]))
                    if group_size is None or inner.size == group_size or \
                            (whole_multiple and inner.size % group_size == 0):
                        return resolve(Prod(factors[start:stop + 1])), inner
                if product > groups:
                    break
            if outer:  # only the outermost factors
                break
    first = resolve(factors[0])
    if type(first) is Cat and current_size(first.parts[0]) == groups:
        # The rows of one dimension hold the query heads first, then the key/value heads (multi-query
        # attention viewed as ``[heads + 2, head_dim]``): the heads are that first piece.
        inner = resolve(Prod(factors[1:]))
        if group_size is None or inner.size == group_size:
            return resolve(first.parts[0]), inner
    return None
