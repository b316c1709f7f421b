"""``PRUNING_CORE_TRACE_PLUGINS=1``: one line to stderr before and after every hook call.

Installed with pluggy's ``add_hookcall_monitoring``, so it sees every call made
through ``pm.hook``. Arguments are shown by type (a model's repr would fill the
screen).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Sequence


def _describe(value: Any) -> str:
    if isinstance(value, (str, int, float, bool, type(None))):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, dict):
        return f"{{{len(value)} item(s)}}"
    return type(value).__name__


def trace_before(hook_name: str, impls: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    args = ", ".join(f"{k}={_describe(v)}" for k, v in kwargs.items())
    plugins = ", ".join(impl.plugin_name for impl in reversed(impls))
    sys.stderr.write(f"pruning_core: {hook_name}({args}) -> {plugins or 'no plugin'}\n")


def trace_after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    if outcome.exception is not None:
        sys.stderr.write(f"pruning_core: {hook_name} raised {type(outcome.exception).__name__}: "
                         f"{outcome.exception}\n")
        return
    result = outcome.get_result()
    if isinstance(result, list):
        count = sum(len(r) if isinstance(r, list) else 1 for r in result)
        sys.stderr.write(f"pruning_core: {hook_name} returned {count} result(s)\n")
    else:
        sys.stderr.write(f"pruning_core: {hook_name} returned {_describe(result)}\n")
