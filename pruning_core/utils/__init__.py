"""Helpers: MACs and parameters, latency and memory, progress display, optimizer state after pruning."""

from . import benchmark
from .benchmark import measure_fps, measure_latency, measure_memory
from .counting import count_ops_and_params, count_params
from .optim import prune_optimizer_state
from .progress import progress

__all__ = ["count_ops_and_params", "count_params", "benchmark", "measure_latency", "measure_memory",
           "measure_fps", "progress", "prune_optimizer_state"]
