"""Saving and loading pruned transformers models, uniform or not.

* Uniform pruning (same shape in every layer): the config describes the pruned
  model, so ``model.save_pretrained(d)`` and stock ``AutoModel...from_pretrained(d)``
  work; :func:`save_pretrained` does that too.
* Non-uniform pruning (global pruning): stock transformers cannot build per-layer
  shapes from a config. :func:`save_pretrained` then also writes ``pruning.json``
  (the per-module shapes and attributes, see pruning_core's serialization) and
  :func:`from_pretrained` rebuilds the model from the original config plus that record.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from torch import nn

from pruning_core import SerializationError

RECORD = "pruning.json"


def save_pretrained(model: nn.Module, directory: str, **kwargs: Any) -> str:
    """``model.save_pretrained(directory)``, plus the pruning record when layers differ."""
    from pruning_core.serialization import structure_of

    config = model.config
    uniform = getattr(config, "pruning_core", {}).get("uniform", True)
    model.save_pretrained(directory, **kwargs)
    if not uniform:
        with open(os.path.join(directory, RECORD), "w") as handle:
            json.dump({"format": "pruning_core.hf/1", "structure": structure_of(model)}, handle, indent=1)
    return directory


def from_pretrained(directory: str, model_class: Optional[Any] = None, **kwargs: Any) -> nn.Module:
    """Load a model saved by :func:`save_pretrained`, uniform or not.

    :param model_class: the transformers class (default: from the config's ``architectures``).
    """
    import transformers
    from safetensors.torch import load_file

    from pruning_core.serialization import rebuild_structure

    config = transformers.AutoConfig.from_pretrained(directory)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise SerializationError(f"{directory}: the config names no architecture; pass model_class")
    record_path = os.path.join(directory, RECORD)
    if not os.path.exists(record_path):
        return model_class.from_pretrained(directory, **kwargs)
    with open(record_path) as handle:
        record = json.load(handle)
    if record.get("format") != "pruning_core.hf/1":
        raise SerializationError(f"{record_path} is not a pruning_core transformers record")
    model = model_class(config)
    rebuild_structure(model, record["structure"])
    weights = os.path.join(directory, "model.safetensors")
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise SerializationError(f"{directory}: weights do not match the record (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
