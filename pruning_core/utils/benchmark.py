"""Latency and memory measurement for before/after reports."""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from .progress import progress


def _call(model: nn.Module, inputs: Any, forward_fn: Optional[Callable[[nn.Module, Any], Any]]) -> Any:
    if forward_fn is not None:
        return forward_fn(model, inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


@torch.no_grad()
def measure_latency(model: nn.Module, example_inputs: Any, repeat: int = 20, warmup: int = 3,
                    forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                    label: str = "latency") -> Tuple[float, float]:
    """Mean and standard deviation of one forward pass, in milliseconds (CPU wall time)."""
    for _ in range(warmup):
        _call(model, example_inputs, forward_fn)
    times = []
    for _ in progress(range(repeat), label):
        start = time.perf_counter()
        _call(model, example_inputs, forward_fn)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.mean(times), (statistics.stdev(times) if len(times) > 1 else 0.0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def measure_memory(model: nn.Module, example_inputs: Any,
                   forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None) -> int:
    """Bytes of parameters and buffers plus the resident-memory growth of one forward pass."""
    gc.collect()
    tensors = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    before = _rss_bytes()
    _call(model, example_inputs, forward_fn)
    return tensors + max(0, _rss_bytes() - before)


def measure_fps(model: nn.Module, example_inputs: Any, repeat: int = 20) -> float:
    """Forward passes per second."""
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat)
    return 1000.0 / mean_ms


__all__ = ["measure_latency", "measure_memory", "measure_fps"]
