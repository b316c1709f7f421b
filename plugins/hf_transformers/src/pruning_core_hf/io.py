"""Saving and loading pruned transformers models: a directory that always loads, and says how.

:func:`save_pretrained` writes one of two forms and returns which:

* ``"stock"``: the config describes the pruned model exactly (checked by
  building the model it describes on the meta device and comparing every
  tensor shape and every scalar attribute), so stock
  ``AutoModel...from_pretrained(directory)`` rebuilds it with the same outputs.
* ``"pruning_core_hf"``: the family's config cannot express the pruned shapes
  (layers pruned differently, a hidden size the attention code derives a head
  size from, an embedding scale recomputed from the hidden size, ...). The
  directory holds the config before pruning, the weights in
  ``pruned.safetensors`` (the model's own tensor names) and ``pruning.json``
  (the per-module shapes and attributes); :func:`from_pretrained` loads it.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import json
import logging
import os
import warnings
from typing import Any, Optional

from torch import nn

from pruning_core import SerializationError
from pruning_core.errors import PruningWarning

_OWN_SAVE = contextvars.ContextVar("pruning_core_hf_own_save", default=False)

RECORD = "pruning.json"
WEIGHTS = "pruned.safetensors"
STOCK, PLUGIN = "stock", "pruning_core_hf"
logger = logging.getLogger("pruning_core_hf")


class SavedModel(str):
    """The directory written by :func:`save_pretrained` (a ``str``), with ``form`` and ``reason``.

    ``form`` is ``"stock"`` (loads with stock transformers) or ``"pruning_core_hf"``
    (load with :func:`pruning_core_hf.from_pretrained`); ``reason`` says why the
    config could not describe the pruned model (empty for the stock form).
    """

    form: str
    reason: str

    def __new__(cls, directory: str, form: str, reason: str = "") -> "SavedModel":
        saved = super().__new__(cls, directory)
        saved.form, saved.reason = form, reason
        return saved

    def __getnewargs__(self) -> tuple:  # copy and pickle (transformers deep-copies path arguments)
        return (str(self), self.form, self.reason)


def _original_config(model: nn.Module) -> Any:
    from .config import FULL_ORIGINAL

    return model.__dict__.get(FULL_ORIGINAL)


def save_pretrained(model: nn.Module, directory: str, **kwargs: Any) -> SavedModel:
    """Save ``model`` in the stock form when its config can describe it, else in the plugin's form.

    Returns the directory as a :class:`SavedModel` whose ``form`` says which was
    written; the choice is also logged on the ``pruning_core_hf`` logger.
    """
    token = _OWN_SAVE.set(True)  # no plain-save warning for the save this function chose
    try:
        return _save(model, directory, **kwargs)
    finally:
        _OWN_SAVE.reset(token)


def _save(model: nn.Module, directory: str, **kwargs: Any) -> SavedModel:
    from .express import express

    original = _original_config(model)
    if original is None:  # never pruned: nothing to check
        model.save_pretrained(directory, **kwargs)
        return SavedModel(directory, STOCK)
    candidate, reason = express(model, model.config, original)
    if candidate is not None:
        kept = model.config
        candidate.pruning_core = {"uniform": True}
        try:
            model.config = candidate
            model.save_pretrained(directory, **kwargs)
            for key, value in vars(candidate).items():  # the model's config now says what was saved
                if not key.startswith("_") and getattr(kept, key, None) != value:
                    setattr(kept, key, value)
            logger.info("%s: saved in the stock form (loads with transformers' from_pretrained)", directory)
            return SavedModel(directory, STOCK)
        except Exception as exc:  # transformers' validation at save time
            reason = f"transformers refuses to save the config ({type(exc).__name__}: {str(exc)[:200]})"
        finally:
            model.config = kept
    _save_plugin_form(model, original, directory, reason)
    logger.warning("%s: saved in the pruning_core_hf form, load it with pruning_core_hf.from_pretrained; stock "
                   "transformers cannot rebuild it because %s", directory, reason)
    return SavedModel(directory, PLUGIN, reason)


def _save_plugin_form(model: nn.Module, original: Any, directory: str, reason: str) -> None:
    from safetensors.torch import save_model

    from pruning_core.serialization import encode, structure_of

    from .config import saved_state

    os.makedirs(directory, exist_ok=True)
    config = copy.deepcopy(original)
    config.architectures = [type(model).__name__]
    config.pruning_core = {"uniform": False, "reason": reason}
    config.save_pretrained(directory)
    generation = getattr(model, "generation_config", None)
    if generation is not None and callable(getattr(generation, "save_pretrained", None)):
        generation.save_pretrained(directory)
    save_model(model, os.path.join(directory, WEIGHTS))  # shared (tied) tensors are stored once
    with open(os.path.join(directory, RECORD), "w") as handle:
        json.dump({"format": "pruning_core.hf/1", "structure": structure_of(model), "weights": WEIGHTS,
                   "config": encode(saved_state(model) or {}), "reason": reason}, handle, indent=1)


def from_pretrained(directory: str, model_class: Optional[Any] = None, **kwargs: Any) -> nn.Module:
    """Load a model saved by :func:`save_pretrained`, in either form.

    :param model_class: the transformers class (default: from the config's ``architectures``).
    """
    import transformers

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
    return _load_plugin_form(directory, model_class, config, record)


def _load_plugin_form(directory: str, model_class: Any, config: Any, record: Any) -> nn.Module:
    from safetensors.torch import load_file

    from pruning_core.serialization import decode, rebuild_structure

    from .config import restore_state
    from .checkpoint import config_dtype, default_dtype

    with default_dtype(config_dtype(config)):  # the saved precision (bf16 stays bf16), as stock from_pretrained
        model = model_class(config)
    rebuild_structure(model, record["structure"])
    # Files written before 0.2 hold the weights in model.safetensors under the model's own names;
    # prune_checkpoint writes shards and names their index.
    weights = os.path.join(directory, record.get("weights", "model.safetensors"))
    if weights.endswith(".index.json"):
        with open(weights) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(os.path.join(directory, shard)))
    else:
        state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    shared = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    missing = [k for k in missing if model.state_dict()[k].data_ptr() not in shared]
    if missing or unexpected:
        raise SerializationError(f"{directory}: weights do not match the record (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
    if record.get("config"):
        restore_state(model, decode(record["config"]))
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


__all__ = ["save_pretrained", "from_pretrained", "SavedModel", "STOCK", "PLUGIN", "warn_on_plain_save"]
