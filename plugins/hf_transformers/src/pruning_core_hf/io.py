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

import contextvars
import functools
import json
import os
import warnings
from typing import Any, Optional

from torch import nn

from pruning_core import SerializationError
from pruning_core.errors import PruningWarning

_OWN_SAVE = contextvars.ContextVar("pruning_core_hf_own_save", default=False)

RECORD = "pruning.json"


def save_pretrained(model: nn.Module, directory: str, **kwargs: Any) -> str:
    """``model.save_pretrained(directory)``, plus the pruning record when layers differ."""
    from pruning_core.serialization import structure_of

    config = model.config
    uniform = getattr(config, "pruning_core", {}).get("uniform", True)
    token = _OWN_SAVE.set(True)
    try:
        model.save_pretrained(directory, **kwargs)
    finally:
        _OWN_SAVE.reset(token)
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

    warn_on_plain_save()
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


def warn_on_plain_save() -> None:
    """Make ``PreTrainedModel.save_pretrained`` warn when layers were pruned differently.

    Stock ``from_pretrained`` builds every layer from one config, so it cannot load such a
    checkpoint; the warning names :func:`save_pretrained` instead. Installed once, on first
    use of the plugin; models that were not pruned non-uniformly are unaffected.
    """
    import transformers

    cls = transformers.PreTrainedModel
    if getattr(cls.save_pretrained, "_pruning_core_warns", False):
        return
    original = cls.save_pretrained

    @functools.wraps(original)
    def save_pretrained(self: Any, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        info = getattr(getattr(self, "config", None), "pruning_core", None)
        if isinstance(info, dict) and info.get("uniform") is False and not _OWN_SAVE.get():
            warnings.warn(
                f"{type(self).__name__}.save_pretrained: this model's layers were pruned differently "
                f"({info.get('reason', 'non-uniform pruning')}), so stock from_pretrained cannot load the "
                f"checkpoint. Save with pruning_core_hf.save_pretrained(model, {str(save_directory)!r}) and load "
                "with pruning_core_hf.from_pretrained", PruningWarning, stacklevel=2)
        return original(self, save_directory, *args, **kwargs)

    save_pretrained._pruning_core_warns = True  # type: ignore[attr-defined]
    cls.save_pretrained = save_pretrained
