"""Hook implementations of the ``timm`` plugin. This module must import without timm."""

from __future__ import annotations

from typing import Any, Dict, List, Union

from pruning_core import AttentionLayout, LayerHandlerSpec, ModelScheme, StructureHint, hookimpl


def _is_timm_model(model: Any) -> bool:
    return type(model).__module__.startswith("timm.")


@hookimpl
def register_layer_handlers() -> List[LayerHandlerSpec]:
    """ScaledStdConv2d (NFNets): its per-channel ``gain`` and fan-in ``scale``."""
    from .std_conv import scaled_std_conv_handler

    return [LayerHandlerSpec(target=f"timm.layers.std_conv.{name}", handler=scaled_std_conv_handler)
            for name in ("ScaledStdConv2d", "ScaledStdConv2dSame")]


@hookimpl
def collect_structure_hints(model: Any) -> List[Union[AttentionLayout, StructureHint]]:
    """Layouts of fused-qkv attention, selective-kernel paths, and the classifier (kept)."""
    if not _is_timm_model(model):
        return []
    from .blocks import structure_hints

    return structure_hints(model)


@hookimpl
def fixup_after_prune(model: Any, modules: Dict[str, Any]) -> None:
    """Scale shapes, classifier-head widths and num_features (attention attributes are the core's)."""
    if not _is_timm_model(model):
        return
    from .blocks import fix_all

    fix_all(model, modules)


def _resolve(spec: str) -> Any:
    from .sources import resolve

    return resolve(spec)


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [ModelScheme("timm", "timm:convnext_tiny", "a timm architecture with random weights", resolve=_resolve)]
