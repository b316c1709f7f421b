"""Hook implementations of the ``yolo`` plugin. This module must import without ultralytics."""

from __future__ import annotations

from typing import Any, List

from pruning_core import StructureHint, hookimpl


@hookimpl
def collect_structure_hints(model: Any) -> List[StructureHint]:
    """Keep the final prediction convolutions of the ``Detect`` head."""
    hints: List[StructureHint] = []
    for module in getattr(model, "modules", lambda: [])():
        if type(module).__name__ in ("Detect", "Segment", "Pose", "OBB") and \
                type(module).__module__.startswith("ultralytics."):
            for branch in list(getattr(module, "cv2", [])) + list(getattr(module, "cv3", [])):
                last = list(branch.modules())[-1]
                if hasattr(last, "weight"):
                    hints.append(StructureHint(module=last, keep=True))
    return hints
