"""Keep Python's cyclic garbage collector off the framework's objects during library calls.

In a process holding torch (and maybe transformers), hundreds of thousands of
long-lived objects sit in the oldest GC generation; every full collection
triggered by our allocations walks all of them. ``gc.freeze()`` moves them
aside for the duration of one call, so collections only look at objects the
call created; ``gc.unfreeze()`` puts them back. If the application froze
objects itself, we leave its choice alone.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_state = threading.local()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    depth = getattr(_state, "depth", 0)
    owner = depth == 0 and gc.isenabled() and gc.get_freeze_count() == 0
    _state.depth = depth + 1
    if owner:
        gc.freeze()
    try:
        yield
    finally:
        _state.depth = depth
        if owner:
            gc.unfreeze()


def without_gc(fn: F) -> F:
    """Decorator form of :func:`paused_gc`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with paused_gc():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
