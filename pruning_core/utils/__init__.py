"""Measurement helpers (MACs and parameters, latency and memory, progress) and Torch-Pruning's ``tp.utils``
extras (``print_tool``, ``flatten_as_list``, the ``draw_*`` plots; matplotlib is needed only to draw)."""

from . import benchmark
from .benchmark import measure_fps, measure_latency, measure_memory, measure_throughput
from .counting import count_ops_and_params, count_params
from .draw import draw_computational_graph, draw_dependency_graph, draw_groups
from .latency import compare_latency
from .optim import prune_optimizer_state
from .progress import phase, progress
from .tools import flatten_as_list, print_tool

__all__ = ["count_ops_and_params", "count_params", "benchmark", "measure_latency", "measure_memory",
           "measure_fps", "measure_throughput", "compare_latency", "progress", "phase", "flatten_as_list",
           "print_tool", "draw_dependency_graph", "draw_groups", "draw_computational_graph", "prune_optimizer_state"]
