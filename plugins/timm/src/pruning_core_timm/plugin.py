"""Hook implementations of the ``timm`` plugin. This module must import without timm."""

from __future__ import annotations

from typing import Any, List

from pruning_core import StructureHint, hookimpl


@hookimpl
def collect_structure_hints(model: Any) -> List[StructureHint]:
    """Keep the classifier that ``model.get_classifier()`` names."""
    if not type(model).__module__.startswith("timm."):
        return []
    classifier = getattr(model, "get_classifier", lambda: None)()
    return [StructureHint(module=classifier, keep=True)] if hasattr(classifier, "weight") else []
