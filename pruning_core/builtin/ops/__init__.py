"""Built-in op rules, one module per family of aten operators."""

from __future__ import annotations

from typing import Callable, Dict, List

from ...records import OpRuleSpec


def specs(table: Dict[str, Callable]) -> List[OpRuleSpec]:
    """Turn ``{"aten::op": rule}`` into records."""
    return [OpRuleSpec(op=name, rule=rule) for name, rule in table.items()]
