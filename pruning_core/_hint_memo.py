"""Plugins' structure hints, collected once per model while a pruner sets up.

Setting up asks for them four times (sizes while tracing, structure, attention layouts, the
block stack), and a plugin may scan the whole model to answer (the hf plugin does).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List

_local = threading.local()


@contextlib.contextmanager
def remembering_hints() -> Iterator[None]:
    """Inside the block, :func:`hint_records` collects each model's hints only once."""
    previous = getattr(_local, "memo", None)
    _local.memo = {} if previous is None else previous
    try:
        yield
    finally:
        _local.memo = previous


def hint_records(model: Any, collect: Callable[[], List[Any]]) -> List[Any]:
    """``collect()``, or what it returned for ``model`` earlier in the same :func:`remembering_hints` block."""
    memo = getattr(_local, "memo", None)
    if memo is None:
        return collect()
    if id(model) not in memo:
        memo[id(model)] = (model, collect())  # holding the model keeps its id from being reused
    return memo[id(model)][1]


def add_hints(model: Any, records: List[Any]) -> None:
    """Inside :func:`remembering_hints`, once ``model``'s hints are collected: ``records`` join them.

    For hints a pruner derives from its own arguments (the attributes that hold a ``num_heads``
    layer's head count), so that tracing and planning see them like a plugin's.
    """
    memo = getattr(_local, "memo", None)
    if records and memo is not None and id(model) in memo:
        memo[id(model)] = (model, memo[id(model)][1] + list(records))
