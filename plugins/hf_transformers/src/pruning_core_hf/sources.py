"""The ``hf:`` model spec: ``hf:PATH`` (a local directory with a config) for the command line."""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, List, Optional

import torch

from pruning_core import ConfigurationError, ModelSource


def resolve(spec: str) -> Optional[ModelSource]:
    scheme, _, target = spec.partition(":")
    if scheme != "hf":
        return None
    if not os.path.isdir(target):
        raise ConfigurationError(f"hf:{target}: give a local directory with config.json (models are never "
                                 "downloaded); for example one written by save_pretrained")
    if not os.path.isfile(os.path.join(target, "config.json")):
        raise ConfigurationError(f"hf:{target}: the directory has no config.json; expected a transformers model "
                                 "directory written by save_pretrained (config.json and the weights)")
    import transformers

    from .io import from_pretrained

    config = transformers.AutoConfig.from_pretrained(target)
    names = getattr(config, "architectures", None) or []
    # from_pretrained also loads models whose layers were pruned differently (pruning.json).
    model = from_pretrained(target, model_class=None if names else transformers.AutoModel).eval()
    inputs = _example_inputs(model, target)
    from .config import optional_api

    keep = tuple(m for m in (optional_api(model, "get_output_embeddings"),) if m is not None)
    return ModelSource(model, inputs, spec, keep=keep, description=f"{type(model).__name__} from {target}",
                       encode_text=_text_encoder(target))


def _text_encoder(directory: str) -> Optional[Callable[[List[str]], Any]]:
    """The model's own tokenizer as ``lines -> batch`` (padded), or None where the directory has none."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    except Exception:  # vision models and directories without tokenizer files
        return None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers often have no pad token

    def encode(lines: List[str]) -> Any:
        return dict(tokenizer(lines, return_tensors="pt", padding=True, truncation=True, max_length=128))

    return encode


def _example_inputs(model: Any, directory: str) -> Any:
    config = model.config
    if "pixel_values" in inspect.signature(model.forward).parameters:  # an image model
        size = getattr(config, "image_size", 224)
        return {"pixel_values": torch.randn(1, getattr(config, "num_channels", 3), size, size)}
    try:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        return dict(tokenizer(["Pruning removes whole channels."], return_tensors="pt"))
    except Exception:
        return {"input_ids": torch.randint(0, getattr(config, "vocab_size", 100), (1, 16))}
