"""Which channels each step removes: ratio scopes, local and global ranking, rounding and clamping."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..graph.dims import Atom
from ..graph.group import Group
from ..graph.slots import Slot
from ..errors import PruningWarning, warn
from .options import PruningOptions, schedule


@dataclasses.dataclass
class PlannedGroup:
    """One group of coupled channels, as the pruner tracks it across steps."""

    atom: Atom
    root: Slot
    initial: int
    ratio: float
    scope: Hashable
    is_head: bool
    positions_per_channel: int
    round_to: int = 1  # a plugin's hint: keep a multiple of this many channels (the nearest one)

    @property
    def current(self) -> int:
        return self.atom.current_size

    def min_keep(self, options: PruningOptions) -> int:
        return max(1, math.ceil(self.initial * (1.0 - options.max_pruning_ratio) - 1e-9))

    def rounding(self, options: PruningOptions) -> int:
        """Keep a multiple of this many channels so the root layer keeps a multiple of ``round_to``."""
        if not options.round_to:
            return 1
        return options.round_to // math.gcd(options.round_to, self.positions_per_channel)


def _subtree_ids(module: nn.Module) -> set:
    return {id(m) for m in module.modules()}


def resolve_ratio(owner: nn.Module, table: Dict[Any, float], default: float, kind: str
                  ) -> Tuple[float, Optional[Hashable]]:
    """The ratio for a group whose root layer is ``owner``, and the shared scope of a tuple key."""
    best: Optional[Tuple[int, float, Optional[Hashable]]] = None
    for index, (key, value) in enumerate(table.items()):
        modules = key if isinstance(key, tuple) else (key,)
        for module in modules:
            ids = _subtree_ids(module)
            if id(owner) in ids and (best is None or len(ids) < best[0]):
                best = (len(ids), value, (kind, index) if isinstance(key, tuple) else None)
    if best is None:
        return default, None
    return best[1], best[2]


def keep_count(group: PlannedGroup, target_ratio: float, options: PruningOptions) -> Tuple[int, bool]:
    """Channels to keep after reaching ``target_ratio``; and whether clamping raised it."""
    keep = math.floor(group.initial * (1.0 - target_ratio) + 0.5)
    clamped = keep < 1
    keep = max(keep, group.min_keep(options))
    if group.round_to > 1 and group.initial % group.round_to == 0:
        keep = max(group.round_to, group.round_to * math.floor(keep / group.round_to + 0.5))
    step = group.rounding(options)
    if step > 1:
        keep = min(group.initial, step * math.ceil(keep / step))
    return min(keep, group.current), clamped


def select_local(group: PlannedGroup, scores: torch.Tensor, target_ratio: float, options: PruningOptions
                 ) -> Tuple[List[int], bool]:
    keep, clamped = keep_count(group, target_ratio, options)
    remove = group.current - keep
    if remove <= 0:
        return [], clamped
    return sorted(torch.argsort(scores, stable=True)[:remove].tolist()), clamped


def select_shared(groups: Sequence[PlannedGroup], scores: Sequence[torch.Tensor], target_ratio: float,
                  options: PruningOptions) -> List[List[int]]:
    """Global ranking within one scope: remove the lowest scores overall, within each group's limits."""
    total_initial = sum(g.initial for g in groups)
    already = sum(g.initial - g.current for g in groups)
    budget = int(math.floor(total_initial * target_ratio + 0.5)) - already
    chosen: List[List[int]] = [[] for _ in groups]
    if budget <= 0:
        return chosen
    entries = []
    for gi, s in enumerate(scores):
        for ci, value in enumerate(s.tolist()):
            entries.append((value, gi, ci))
    entries.sort()
    room = [g.current - g.min_keep(options) for g in groups]
    for value, gi, ci in entries:
        if budget <= 0:
            break
        if room[gi] <= 0:
            continue
        chosen[gi].append(ci)
        room[gi] -= 1
        budget -= 1
    for gi, group in enumerate(groups):
        step = group.rounding(options)
        if step > 1 and chosen[gi]:
            keep = group.current - len(chosen[gi])
            keep = min(group.current, step * math.ceil(keep / step))
            order = sorted(chosen[gi], key=lambda c: float(scores[gi][c]))
            chosen[gi] = order[:group.current - keep]
        chosen[gi].sort()
    return chosen


def plan_step(groups: Sequence[PlannedGroup], step: int, options: PruningOptions,
              score: Callable[[PlannedGroup], torch.Tensor]) -> List[Tuple[PlannedGroup, List[int]]]:
    """The channels each group loses at ``step`` (1-based), computed before anything is pruned."""
    by_scope: Dict[Hashable, List[PlannedGroup]] = {}
    for group in groups:
        by_scope.setdefault(group.scope, []).append(group)
    result: List[Tuple[PlannedGroup, List[int]]] = []
    clamped: List[str] = []
    for scope, members in by_scope.items():
        target = schedule(options, members[0].ratio)[step]
        if target <= 0:
            continue
        if len(members) == 1 and not (isinstance(scope, tuple) and scope and scope[0] in ("global", "tuple")):
            group = members[0]
            idxs, was_clamped = select_local(group, score(group), target, options)
            if was_clamped:
                clamped.append(group.root.describe())
            result.append((group, idxs))
            continue
        scores = [score(g) for g in members]
        for group, idxs in zip(members, select_shared(members, scores, target, options)):
            result.append((group, idxs))
    if clamped:
        warn(f"pruning ratio would remove every channel of {len(clamped)} group(s) "
             f"({', '.join(clamped[:4])}{', ...' if len(clamped) > 4 else ''}); kept one channel "
             "(or one head) in each")
    return result


def group_for(graph: Any, planned: PlannedGroup, channels: Sequence[int]) -> Group:
    full = graph.make_group([(planned.atom, torch.arange(planned.atom.current_size))], planned.root)
    return full.channel_group(channels)


__all__ = ["PlannedGroup", "PruningWarning", "plan_step", "resolve_ratio", "group_for", "keep_count"]
