"""The pruner's side of distributed pruning: reduce statistics before scoring, compare plans before removing.

Kept apart from ``base.py`` so the pruner only makes three calls; the machinery is in
:mod:`pruning_core.distributed`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..distributed import Context, check_model, entry, resolve
from ..distributed import check_plan as check_entries
from ..distributed import reduce_state


def context(pruner: Any) -> Optional[Context]:
    """The process group ``pruner`` reduces over, or None (``distributed=False``, or one process)."""
    return resolve(pruner.options.distributed, pruner.options.process_group)


def reduce_statistics(pruner: Any) -> None:
    """Sum the state of the pruner's criterion (and of the pruner, if it has any) over the ranks."""
    found = context(pruner)
    if found is None:
        return
    reduce_state(pruner.importance, pruner.model, found)
    reduce_state(pruner, pruner.model, found)


def reduce_calibration(pruner: Any, statistics: Any) -> None:
    """Sum freshly collected calibration statistics over the ranks (every block of a sequential walk too)."""
    reduce_state(statistics, pruner.model, context(pruner))


def check_plan(pruner: Any, plan: Sequence) -> None:
    """Raise :class:`~pruning_core.errors.PlanMismatchError` on every rank unless all planned the same."""
    found = context(pruner)
    if found is None:
        return
    entries = [entry(planned.root.describe(), planned.current, idxs) for planned, idxs in plan]
    check_entries(entries, found, pruner.current_step)


__all__ = ["context", "reduce_statistics", "reduce_calibration", "check_plan", "check_model"]
