"""Hook implementations of the ``hf`` plugin. This module must import without transformers."""

from __future__ import annotations

from typing import Any, List

from pruning_core import StructureHint, hookimpl


def _is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


@hookimpl
def collect_structure_hints(model: Any) -> List[StructureHint]:
    """Keep the output head (``lm_head`` or tied output embeddings) of a transformers model."""
    if not _is_transformers_model(model):
        return []
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return [StructureHint(module=head, keep=True)] if head is not None else []
