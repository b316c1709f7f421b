"""Measurement helpers: MACs and parameters, latency and memory."""

from .counting import count_ops_and_params, count_params

__all__ = ["count_ops_and_params", "count_params"]
