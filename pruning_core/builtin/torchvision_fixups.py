"""Attribute fix-ups for torchvision models (plain torch ops, so they live in the core).

Matched by class path, so torchvision is never imported here.
"""

from __future__ import annotations

from typing import Any, Dict

from ..hookspecs import hookimpl

VISION_TRANSFORMER = "torchvision.models.vision_transformer.VisionTransformer"


def _class_path(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@hookimpl
def fixup_after_prune(model: Any, modules: Dict[str, Any]) -> None:
    """``VisionTransformer.hidden_dim`` is used to reshape patches: keep it equal to the patch embedding width."""
    for module in modules.values():
        if _class_path(module) == VISION_TRANSFORMER:
            module.hidden_dim = module.conv_proj.out_channels
