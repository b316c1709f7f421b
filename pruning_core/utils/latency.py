"""Comparing the latency of two models fairly: interleaved rounds, warm-up, median and spread.

Timing one model and then the other on a shared machine compares two moments as much as two
models: a burst of load from elsewhere lands on one side only. :func:`compare_latency` warms both
models up, then alternates them round by round (A B, B A, A B, ...), records wall and CPU time of
every round, and summarises each side by its median and interquartile range. The ratio of the two
is taken per round (each pair ran side by side), so drift cancels; when the spread of those
ratios straddles 1.0 the result says it cannot conclude.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..calling import ForwardFn
from ..calling import call_model as _call
from .progress import Phase



def _quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]

    def at(fraction: float) -> float:
        position = fraction * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return at(0.25), at(0.5), at(0.75)


@dataclasses.dataclass
class Timing:
    """Per-call times of one model over the rounds, in milliseconds."""

    wall_ms: List[float]
    cpu_ms: List[float]

    def summary(self) -> Dict[str, Any]:
        if not self.wall_ms:
            return {"wall_ms": None, "wall_iqr_ms": None, "cpu_ms": None, "cpu_iqr_ms": None}
        w25, wmed, w75 = _quartiles(self.wall_ms)
        c25, cmed, c75 = _quartiles(self.cpu_ms)
        return {"wall_ms": round(wmed, 3), "wall_iqr_ms": [round(w25, 3), round(w75, 3)],
                "cpu_ms": round(cmed, 3), "cpu_iqr_ms": [round(c25, 3), round(c75, 3)]}


@dataclasses.dataclass
class LatencyComparison:
    """Result of :func:`compare_latency`: both timings, the paired ratios and a verdict."""

    original: Timing
    pruned: Timing
    rounds: int
    calls_per_round: int
    threads: int
    seconds: float
    warmup_s: float = 0.0

    def ratios(self, kind: str = "wall") -> List[float]:
        a = self.original.wall_ms if kind == "wall" else self.original.cpu_ms
        b = self.pruned.wall_ms if kind == "wall" else self.pruned.cpu_ms
        return [y / x for x, y in zip(a, b) if x > 0]

    def verdict(self, kind: str = "wall") -> str:
        """"faster", "slower", or "inconclusive" (too few rounds, or a ratio spread that includes 1.0)."""
        ratios = self.ratios(kind)
        if self.rounds < 3 or not ratios:
            return "inconclusive"
        q25, _, q75 = _quartiles(ratios)
        if q75 < 1.0:
            return "faster"
        if q25 > 1.0:
            return "slower"
        return "inconclusive"

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"rounds": self.rounds, "calls_per_round": self.calls_per_round,
                               "threads": self.threads, "seconds": round(self.seconds, 2),
                               "warmup_s": round(self.warmup_s, 2),
                               "original": self.original.summary(), "pruned": self.pruned.summary()}
        for kind in ("wall", "cpu"):
            ratios = self.ratios(kind)
            if ratios:
                q25, med, q75 = _quartiles(ratios)
                out[f"{kind}_ratio"] = round(med, 3)
                out[f"{kind}_ratio_iqr"] = [round(q25, 3), round(q75, 3)]
            out[f"{kind}_verdict"] = self.verdict(kind)
        return out


def _timed(model: nn.Module, inputs: Any, forward_fn: ForwardFn, calls: int) -> Tuple[float, float]:
    """Wall and CPU milliseconds per call, over ``calls`` calls."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        _call(model, inputs, forward_fn)
    sync()
    return (time.perf_counter() - wall0) * 1000 / calls, (time.process_time() - cpu0) * 1000 / calls


@torch.no_grad()
def compare_latency(original: nn.Module, pruned: nn.Module, inputs: Any, forward_fn: ForwardFn = None,
                    budget_s: float = 10.0, max_rounds: int = 25, round_s: float = 0.1,
                    pruned_inputs: Any = None, label: str = "latency", lines: bool = False) -> LatencyComparison:
    """Time ``original`` and ``pruned`` in interleaved rounds, within about ``budget_s`` seconds.

    Each model is warmed up with one call, then rounds alternate which model goes first. A
    round runs enough calls to last about ``round_s`` seconds, so timer resolution does
    not matter for fast models. A round starts only if it should end within the budget
    (warm-up included), so slow models get fewer rounds, possibly none; with fewer than three
    the verdict is "inconclusive".

    :param pruned_inputs: inputs for the pruned model, when they must differ (default: ``inputs``).
    :param lines: without a terminal, write one line when done (the command line's progress).
    """
    start = time.perf_counter()
    second = inputs if pruned_inputs is None else pruned_inputs
    pairs = ((original, inputs), (pruned, second))
    walls: Tuple[List[float], List[float]] = ([], [])
    cpus: Tuple[List[float], List[float]] = ([], [])
    deadline = start + budget_s
    with Phase(label, lines=lines) as bar:
        # Warm-up: one call each (allocation, kernel selection); it also bounds a call's time from above.
        warm = 0.0
        for model, data in pairs:
            began = time.perf_counter()
            _call(model, data, forward_fn)
            warm += time.perf_counter() - began
        calls = max(1, int(round_s / max(warm, 1e-6)))
        expected = warm * calls / 2  # a warm call is about twice as fast as a first one, or faster
        bar.total = max(1, min(max_rounds, int((deadline - time.perf_counter()) / max(expected, 1e-6))))
        for number in range(max_rounds):
            if time.perf_counter() + expected > deadline:
                break
            expected = _round(pairs, number, calls, walls, cpus, forward_fn)
            bar.advance()
        bar.total = max(1, len(walls[0]))
    return LatencyComparison(Timing(walls[0], cpus[0]), Timing(walls[1], cpus[1]), len(walls[0]), calls,
                             torch.get_num_threads(), time.perf_counter() - start, warm)


def _round(pairs: Any, number: int, calls: int, walls: Any, cpus: Any, forward_fn: ForwardFn) -> float:
    """Run one round, alternating which model goes first; returns how long it took."""
    began = time.perf_counter()
    order = (0, 1) if number % 2 == 0 else (1, 0)
    for which in order:
        model, data = pairs[which]
        wall, cpu = _timed(model, data, forward_fn, calls)
        walls[which].append(wall)
        cpus[which].append(cpu)
    return time.perf_counter() - began


__all__ = ["compare_latency", "LatencyComparison", "Timing"]
