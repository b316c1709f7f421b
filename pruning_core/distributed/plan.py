"""Identical decisions, checked: every rank compares a digest of its plan before anything is removed.

One ``all_gather`` of two words (the number of groups and a hash of all of them) settles the
common case. When they differ, every rank gathers the per-group hashes, finds the same first
differing group, gathers that group's kept channels from each rank and raises
:class:`~pruning_core.errors.PlanMismatchError`: all ranks raise, none waits for the others.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from ..errors import PlanMismatchError
from .context import Context
from .state import StateReducer, digest_words


class PlanEntry(NamedTuple):
    """One group of a step's plan: its name (the root layer), its current size and the channels it keeps."""

    name: str
    size: int
    kept: List[int]

    def line(self) -> str:
        return f"{self.name}|{self.size}|{','.join(map(str, self.kept))}"


def entry(name: str, size: int, removed: Sequence[int]) -> PlanEntry:
    """The plan entry of a group of ``size`` channels that loses ``removed``."""
    gone = set(int(i) for i in removed)
    return PlanEntry(name, int(size), [i for i in range(int(size)) if i not in gone])


def _short(kept: List[int], limit: int = 12) -> str:
    text = ", ".join(map(str, kept[:limit]))
    return f"[{text}{', ...' if len(kept) > limit else ''}] ({len(kept)} kept)"


def check_plan(entries: Sequence[PlanEntry], context: Optional[Context], step: int = 0) -> None:
    """Raise :class:`PlanMismatchError` on every rank unless all ranks planned exactly ``entries``."""
    if context is None:
        return
    reducer = StateReducer(context)
    lines = [e.line() for e in entries]
    head = torch.cat([torch.tensor([len(lines)], dtype=torch.long), digest_words(lines)])
    heads = reducer.gather(head)
    if all(torch.equal(h, heads[0]) for h in heads):
        return
    counts = [int(h[0]) for h in heads]
    if len(set(counts)) > 1:
        raise PlanMismatchError(
            f"pruning step {step}: the ranks planned different numbers of groups "
            f"({', '.join(f'rank {r}: {c}' for r, c in enumerate(counts))}); the models or pruner arguments "
            "differ between ranks. Nothing was removed.")
    per_group = torch.stack([digest_words([line], 1)[0] for line in lines]) if lines \
        else torch.zeros(0, dtype=torch.long)
    every = torch.stack(reducer.gather(per_group))  # (world, groups)
    differs = (every != every[0]).any(0).nonzero().reshape(-1)
    first = int(differs[0]) if differs.numel() else 0
    mine = entries[first] if entries else PlanEntry("?", 0, [])
    seen = reducer.gather_objects((mine.name, mine.size, mine.kept))
    detail = "; ".join(f"rank {rank}: {name} keeps {_short(kept)}" for rank, (name, _, kept) in enumerate(seen))
    raise PlanMismatchError(
        f"pruning step {step}: the ranks would prune group {first} differently, starting with the group rooted "
        f"at {seen[0][0]} ({detail}). Nothing was removed. Reduce the statistics across ranks (distributed=None "
        "or True, the default when torch.distributed is initialized) and give every rank the same model, "
        "criterion and seed.")


__all__ = ["PlanEntry", "entry", "check_plan"]
