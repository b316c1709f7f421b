"""Hook implementations of the ``hf`` plugin. This module must import without transformers."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pruning_core import (AttentionLayout, LayerHandlerSpec, ModelScheme, SizeAttribute, StateCodec, StructureHint,
                          hookimpl)


def _is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


@hookimpl
def register_layer_handlers() -> List[LayerHandlerSpec]:
    from .conv1d import conv1d_handler

    return [LayerHandlerSpec(target="transformers.pytorch_utils.Conv1D", handler=conv1d_handler)]


@hookimpl
def collect_structure_hints(model: Any) -> List[Union[AttentionLayout, StructureHint, SizeAttribute]]:
    """Where every attention block keeps its heads, the output head (kept), and raw-weight modules' sizes."""
    if not _is_transformers_model(model):
        return []
    from .attention import attention_layouts, latent_heads
    from .config import hidden_rounding, optional_api

    from .depth import block_stack_hints
    from .sizes import raw_weight_sizes

    # heads; the layer stack (sequential calibration); the hidden width rounded to the head count
    records: List[Union[AttentionLayout, StructureHint, SizeAttribute]] = list(attention_layouts(model))
    records.extend(block_stack_hints(model))
    records.extend(latent_heads(model))
    _warn_unplaced(model)
    records.extend(hidden_rounding(model))
    records.extend(raw_weight_sizes(model))  # routers' and fused experts' sizes follow pruning
    head = optional_api(model, "get_output_embeddings")
    if head is not None:
        records.append(StructureHint(module=head, keep=True))
    return records


def _warn_unplaced(model: Any) -> None:
    """Say which attention blocks keep their heads because their projections could not be placed."""
    from pruning_core.errors import warn

    from .attention import alibi, projections, unplaced

    names = unplaced(model)
    if names:
        warn(f"{type(model).__name__}: the heads of {len(names)} attention block(s) ({', '.join(names[:3])}"
             f"{', ...' if len(names) > 3 else ''}) cannot be placed (low-rank projections, or projections "
             "whose widths are not whole heads); their heads and head sizes are kept")
    config = getattr(model, "config", None)
    biased = [name for name, module in model.named_modules() if projections(module) is not None
              and alibi(module, config)]
    if biased:
        warn(f"{type(model).__name__}: the heads of {len(biased)} attention block(s) ({', '.join(biased[:3])}"
             f"{', ...' if len(biased) > 3 else ''}) are kept whole: their ALiBi slopes are computed in the "
             "model's forward from the head count alone, so the heads kept after pruning would get the slopes "
             "of other head positions and the model's function would change (head dims may still be pruned)")


@hookimpl
def after_step(model: Any, graph: Any) -> None:
    """The config follows the pruned modules (once per step: it scans the whole model)."""
    if _is_transformers_model(model):
        from .config import fix_config

        from .attention import refresh_latent_heads

        if graph is not None:
            graph.remember(model.config)  # an undone step restores the config too
        refresh_latent_heads(model, graph)
        fix_config(model)


def _collect_state(model: Any) -> Optional[Dict[str, Any]]:
    if not _is_transformers_model(model):
        return None
    from .config import saved_state

    return saved_state(model)


def _restore_state(model: Any, state: Dict[str, Any]) -> None:
    from .config import restore_state

    restore_state(model, state)


@hookimpl
def register_state_codecs() -> List[StateCodec]:
    # Named like the plugin: files saved by 0.1 stored this state under the plugin's name.
    return [StateCodec("hf", collect=_collect_state, restore=_restore_state)]


def _resolve(spec: str) -> Any:
    from .sources import resolve

    return resolve(spec)


def _stream(spec: str, output: str, **options: Any) -> Dict[str, Any]:
    from .streaming import stream_spec

    return stream_spec(spec, output, **options)


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [ModelScheme("hf", "hf:path/to/model_dir", "a transformers model saved in a local directory",
                        resolve=_resolve, stream=_stream)]
