"""Declared channel structure (heads, equal blocks) and protection of a traced graph's channels.

Mixed into :class:`~pruning_core.graph.depgraph.DependencyGraph`; it uses the graph's recorder,
index and module lookups.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigurationError
from .dims import FROZEN, UNLOCKED, Cat, DimError, current_size, leaves, resolve
from .slots import Slot


class ChannelStructureMixin:
    """``channel_structure``, ``set_channel_structure`` and ``protect``."""

    def channel_structure(self, name: str, side: str = "out") -> List[int]:
        """Current sizes of the product factors of a layer's channels, outermost first.

        For a projection viewed as heads this is ``[heads, head_size]`` (or
        ``[kv_heads, queries_per_kv, head_size]`` with grouped-query attention, or
        ``[3, heads, head_size]`` for a fused qkv); a plain layer gives ``[channels]``.
        """
        module = self._lookup.get(name)
        if module is None:
            raise ConfigurationError(f"no module named {name!r} in the traced model")
        expr = self._index.slot_exprs[self._channel_slot(module, side).serial]
        if type(expr) is Cat:  # q, k and v joined by a concatenated bias: report them like a fused [3, ...]
            shapes = [self._factor_sizes(part) for part in expr.parts]
            if all(shape == shapes[0] for shape in shapes):
                return [len(shapes)] + shapes[0]
        return self._factor_sizes(expr)

    @staticmethod
    def _factor_sizes(expr: Any) -> List[int]:
        from .dims import Prod

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
        slot = self._channel_slot(module, side)
        space = self._recorder.space
        expr = resolve(slot.expr)
        found = _find_group_factor(expr, groups, group_size)
        pairs = [found] if found is not None else []
        if not pairs and type(expr) is Cat and len({current_size(part) for part in expr.parts}) == 1:
            # Equal parts joined (q, k and v by a concatenated bias): the heads are in each part.
            parts = [_find_group_factor(resolve(part), groups, group_size) for part in expr.parts]
            pairs = parts if all(p is not None for p in parts) else []
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
        self._index_cache = None
        return True

    def protect(self, targets: Iterable[Any], reason: str = "ignored by the user") -> None:
        """Never prune the output channels of these modules (or the dims of these parameters)."""
        for target in targets:
            for slot in self._protected_slots(target):
                self._recorder.space.mark(slot.expr, FROZEN, reason)
        self._index_cache = None

    def _protected_slots(self, target: Any) -> List[Slot]:
        recorder = self._recorder
        if isinstance(target, torch.Tensor):
            return list(recorder.param_slots.get(id(target), []))
        slots = recorder.module_slots.get(id(target))
        if slots:
            return [slots[1]]
        if isinstance(target, nn.Module) and self.has_channels(target):  # its weight was used directly
            return [self._channel_slot(target, "out")]
        return []


def _find_group_factor(expr: Any, groups: int, group_size: Optional[int]) -> Optional[Tuple[Any, Any]]:
    """In a product expression, a run of factors whose sizes multiply to ``groups``, and what follows it.

    With grouped-query attention the heads of a query projection are two
    factors (key/value heads times queries per key/value head).
    """
    from .dims import Prod

    if type(expr) is not Prod:
        return None
    factors = expr.factors
    for start in range(len(factors)):
        product = 1
        for stop in range(start, len(factors)):
            product *= factors[stop].size
            if product == groups:
                inner = resolve(Prod(factors[stop + 1:]))
                if group_size is None or inner.size == group_size:
                    return resolve(Prod(factors[start:stop + 1])), inner
            if product > groups:
                break
    return None
