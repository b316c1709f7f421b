"""einops while tracing: its shape cache is turned off, so a traced size never reaches a later call.

``rearrange(t, "b n (h d) -> b h n d", h=heads)`` works out ``d`` from ``t.shape`` and keeps the
result in an LRU cache keyed by the shape. While tracing, the shape holds ints that remember which
dimension they measure; a later call with equal sizes (the next layer, or the next graph built in the
process) got the cached ints of the first one, which tied the two layers' head sizes together, or,
from an earlier graph, made them look like sizes written in code. einops is not imported here: the
cache is only switched when the model's code has imported it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Optional

from ..hookspecs import hookimpl

_CACHED, _UNCACHED = "_reconstruct_from_shape", "_reconstruct_from_shape_uncached"


@contextlib.contextmanager
def _uncached(module: Any) -> Iterator[None]:
    cached = getattr(module, _CACHED)
    setattr(module, _CACHED, getattr(module, _UNCACHED))
    try:
        yield
    finally:
        setattr(module, _CACHED, cached)


@hookimpl
def tracing_context(model: Any) -> Optional[Any]:
    module = sys.modules.get("einops.einops")
    if module is None or not callable(getattr(module, _UNCACHED, None)) or not hasattr(module, _CACHED):
        return None
    return _uncached(module)
