"""Iterative pruning schedules: the target ratio after each step."""

from __future__ import annotations

from typing import List


def linear_scheduler(pruning_ratio: float, steps: int) -> List[float]:
    """``[0, r/steps, 2r/steps, ..., r]``: equal increments that end exactly at the target."""
    return [pruning_ratio * i / steps for i in range(steps + 1)]


def geometric_scheduler(pruning_ratio: float, steps: int) -> List[float]:
    """Remove the same fraction of what is left at every step; ends exactly at the target."""
    keep = 1.0 - pruning_ratio
    return [1.0 - keep ** (i / steps) for i in range(steps + 1)]


__all__ = ["linear_scheduler", "geometric_scheduler"]
