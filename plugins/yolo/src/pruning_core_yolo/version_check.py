"""Warn once when the installed ultralytics is outside the range this plugin is tested with."""

from __future__ import annotations

import functools
import warnings
from importlib import metadata
from typing import Optional

TESTED = (">=8.4", "<8.5")


def _as_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def outside_tested_range(version: str) -> bool:
    """Whether ``version`` falls outside ``TESTED`` (``>=8.4,<8.5``)."""
    low, high = _as_tuple(TESTED[0][2:]), _as_tuple(TESTED[1][1:])
    return not (low <= _as_tuple(version) < high)


@functools.lru_cache(maxsize=1)
def check_ultralytics_version() -> Optional[str]:
    """The installed version, after warning if it is untested; None when ultralytics is not installed."""
    try:
        version = metadata.version("ultralytics")
    except metadata.PackageNotFoundError:
        return None
    if outside_tested_range(version):
        warnings.warn(f"pruning-core-yolo is tested with ultralytics {','.join(TESTED)}, but {version} is "
                      "installed; its modules may have changed. Check the pruned model, or install a tested "
                      "version", UserWarning, stacklevel=3)
    return version
