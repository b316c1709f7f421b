"""Hook implementations of the ``yolo`` plugin. This module must import without ultralytics."""

from __future__ import annotations

from typing import Any, Dict, List, Union

from pruning_core import AttentionLayout, LayerHandlerSpec, ModelScheme, StructureHint, hookimpl


@hookimpl
def register_layer_handlers() -> List[LayerHandlerSpec]:
    """YOLO11's position-sensitive attention is pruned as one layer (see ``attention.py``)."""
    from .attention import prune_psa_attention_handler

    return [LayerHandlerSpec(target="ultralytics.nn.modules.block.Attention", handler=prune_psa_attention_handler)]


@hookimpl
def collect_structure_hints(model: Any) -> List[Union[AttentionLayout, StructureHint]]:
    """Keep the Detect head's prediction convs; halves of split blocks; attention layouts."""
    if not hasattr(model, "modules"):
        return []
    from .blocks import attention_layouts, structure_hints

    return [*structure_hints(model), *attention_layouts(model)]


@hookimpl
def fixup_after_prune(modules: Dict[str, Any]) -> None:
    """``C2f.c`` and friends (``Attention.head_dim`` is the core's, from the declared layout)."""
    from .blocks import fix_all

    fix_all(modules)


def _resolve(spec: str) -> Any:
    from .sources import resolve

    return resolve(spec)


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [ModelScheme("yolo", "yolo:yolo11n.yaml", "an Ultralytics YOLO model from a bundled YAML (random weights) "
                        "or a .pt checkpoint", resolve=_resolve)]
