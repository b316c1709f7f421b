"""Progress display without dependencies: a bar per phase on a terminal, one line per phase otherwise.

:func:`phase` wraps one phase of a long job (tracing, scoring, pruning...). On a terminal it
draws ``label [#####.....] k/n 3.2s`` on stderr, or, when the amount of work is unknown, the
elapsed time refreshed by a ticker thread. Without a terminal, a command-line phase writes a
single line when it ends (``tracing: 2.31 s``), so logs stay readable; library loops
(:func:`progress`) stay silent there. ``PRUNING_CORE_PROGRESS=1`` forces bars on, ``0`` off.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterable, Iterator, Optional, Sized, TextIO, TypeVar

T = TypeVar("T")
_WIDTH = 24


def progress_enabled() -> bool:
    """Whether bars are drawn: forced by ``PRUNING_CORE_PROGRESS``, else when stderr and stdout are terminals."""
    forced = os.environ.get("PRUNING_CORE_PROGRESS", "").lower()
    if forced in ("0", "false", "off", "no"):
        return False
    if forced in ("1", "true", "on", "yes"):
        return True
    return sys.stderr.isatty() and sys.stdout.isatty()


class Phase:
    """One phase of work; use as a context manager and call :meth:`advance` as units complete.

    :param label: what the phase does ("tracing", "latency"...).
    :param total: how many units of work, or None when unknown (the bar shows elapsed time).
    :param lines: without a terminal, write one line when the phase ends (the command line
        does); library loops pass False and stay silent.
    """

    def __init__(self, label: str, total: Optional[int] = None, lines: bool = True,
                 stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.note = ""  # shown after the counts (a peak memory, ...)
        self.bar = progress_enabled()
        self.lines = lines
        self.stream = stream or sys.stderr
        self.start = 0.0
        self.elapsed = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    def __enter__(self) -> "Phase":
        self.start = time.perf_counter()
        if self.bar:
            self._draw()
            if not self.total:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        return self

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self.bar:
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        elapsed = time.perf_counter() - self.start
        if self.total:
            filled = int(_WIDTH * min(self.done, self.total) / self.total)
            text = f"{self.label:<14} [{'#' * filled}{'.' * (_WIDTH - filled)}] {self.done}/{self.total} {elapsed:6.1f}s {self.note}"
        else:
            text = f"{self.label:<14} {'done' if final else '...':<{_WIDTH + 2}} {elapsed:6.1f}s"
        with self._lock:
            self.stream.write("\r" + text)
            self.stream.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.elapsed = time.perf_counter() - self.start
        failed = exc_type is not None and not issubclass(exc_type, GeneratorExit)  # a loop left early is fine
        if self.bar:
            self._draw(final=True)
            self.stream.write(" failed\n" if failed else "\n")
            self.stream.flush()
        elif self.lines:
            count = f" ({self.done}/{self.total})" if self.total else ""
            note = f", {self.note}" if self.note else ""
            self.stream.write(f"{self.label}: {'failed after ' if failed else ''}{self.elapsed:.2f} s{count}{note}\n")
            self.stream.flush()


def phase(label: str, total: Optional[int] = None, lines: bool = True) -> Phase:
    """A :class:`Phase` for ``with phase("tracing"): ...``."""
    return Phase(label, total, lines)


def progress(items: Iterable[T], label: str, total: Optional[int] = None) -> Iterator[T]:
    """Yield ``items``, drawing a bar on stderr while a terminal is attached (silent otherwise)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    if not progress_enabled() or not total:
        yield from items
        return
    with Phase(label, total, lines=False) as bar:
        for item in items:
            yield item
            bar.advance()


__all__ = ["progress", "progress_enabled", "phase", "Phase"]
