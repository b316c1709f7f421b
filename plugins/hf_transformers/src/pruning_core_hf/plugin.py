"""Hook implementations of the ``hf`` plugin. This module must import without transformers."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pruning_core import LayerHandlerSpec, ModelScheme, StructureHint, hookimpl


def _is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


@hookimpl
def register_layer_handlers() -> List[LayerHandlerSpec]:
    from .conv1d import conv1d_handler

    return [LayerHandlerSpec(target="transformers.pytorch_utils.Conv1D", handler=conv1d_handler)]


@hookimpl
def collect_structure_hints(model: Any) -> List[StructureHint]:
    """Heads of every attention projection, and the output head (kept)."""
    if not _is_transformers_model(model):
        return []
    from .attention import structure_hints

    from .depth import block_stack_hints

    hints = structure_hints(model) + block_stack_hints(model)  # heads; the layer stack (sequential calibration)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None:
        hints.append(StructureHint(module=head, keep=True))
    return hints


@hookimpl
def fixup_after_prune(model: Any, modules: Dict[str, Any], graph: Any) -> None:
    """Attention attributes (heads, head size, scaling, kv groups) and the config."""
    if not _is_transformers_model(model):
        return
    from .attention import fix_attention
    from .config import fix_config

    for name, module in modules.items():
        fix_attention(name, module, graph)
    fix_config(model)


@hookimpl
def collect_model_state(model: Any) -> Optional[Dict[str, Any]]:
    if not _is_transformers_model(model):
        return None
    from .config import saved_state

    return saved_state(model)


@hookimpl
def restore_model_state(model: Any, state: Dict[str, Any]) -> None:
    from .config import restore_state

    restore_state(model, state)


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [ModelScheme("hf", "hf:path/to/model_dir", "a transformers model saved in a local directory")]


@hookimpl
def resolve_model_spec(spec: str) -> Any:
    if not spec.startswith("hf:"):
        return None
    from .sources import resolve

    return resolve(spec)
