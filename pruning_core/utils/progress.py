"""A dependency-free progress bar, shown only when stderr is a terminal."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, Sized, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("PRUNING_CORE_PROGRESS", "").lower() in ("0", "false", "off", "no"):
        return False
    if os.environ.get("PRUNING_CORE_PROGRESS", "").lower() in ("1", "true", "on", "yes"):
        return True
    return sys.stderr.isatty() and sys.stdout.isatty()


def progress(items: Iterable[T], label: str, total: Optional[int] = None) -> Iterator[T]:
    """Yield ``items``, drawing ``label [####....] k/n`` on stderr while a terminal is attached."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    if not progress_enabled() or not total:
        yield from items
        return
    start = time.perf_counter()
    width = 24
    for index, item in enumerate(items, 1):
        yield item
        done = int(width * index / total)
        elapsed = time.perf_counter() - start
        sys.stderr.write(f"\r{label:<18} [{'#' * done}{'.' * (width - done)}] {index}/{total} {elapsed:5.1f}s")
        sys.stderr.flush()
    sys.stderr.write("\n")


__all__ = ["progress", "progress_enabled"]
