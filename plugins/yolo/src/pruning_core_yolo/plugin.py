"""Hook implementations of the ``yolo`` plugin. This module must import without ultralytics."""

from __future__ import annotations

from typing import Any, Dict, List

from pruning_core import LayerHandlerSpec, ModelScheme, StructureHint, hookimpl


@hookimpl
def register_layer_handlers() -> List[LayerHandlerSpec]:
    """YOLO11's position-sensitive attention is pruned as one layer (see ``attention.py``)."""
    from .attention import prune_psa_attention_handler

    return [LayerHandlerSpec(target="ultralytics.nn.modules.block.Attention", handler=prune_psa_attention_handler)]


@hookimpl
def collect_structure_hints(model: Any) -> List[StructureHint]:
    """Keep the Detect head's prediction convs; halves of split blocks; attention heads."""
    from .blocks import structure_hints

    return structure_hints(model) if hasattr(model, "modules") else []


@hookimpl
def fixup_after_prune(model: Any, modules: Dict[str, Any], graph: Any) -> None:
    """``C2f.c`` and friends, ``Attention.head_dim``."""
    from .blocks import fix_all

    fix_all(modules)


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [ModelScheme("yolo", "yolo:yolo11n.yaml", "an Ultralytics YOLO model from a bundled YAML (random weights) "
                        "or a .pt checkpoint")]


@hookimpl
def resolve_model_spec(spec: str) -> Any:
    if not spec.startswith("yolo:"):
        return None
    from .sources import resolve

    return resolve(spec)
