"""The ``hf:`` model spec: ``hf:PATH`` (a local directory with a config) for the command line."""

from __future__ import annotations

import inspect
import os
from typing import Any, Optional

import torch

from pruning_core import ConfigurationError, ModelSource


def resolve(spec: str) -> Optional[ModelSource]:
    scheme, _, target = spec.partition(":")
    if scheme != "hf":
        return None
    if not os.path.isdir(target):
        raise ConfigurationError(f"hf:{target}: give a local directory with config.json (models are never "
                                 "downloaded); for example one written by save_pretrained")
    import transformers

    config = transformers.AutoConfig.from_pretrained(target)
    names = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, names[0], None) if names else transformers.AutoModel
    model = model_class.from_pretrained(target).eval()
    inputs = _example_inputs(model, target)
    from .config import optional_api

    keep = tuple(m for m in (optional_api(model, "get_output_embeddings"),) if m is not None)
    return ModelSource(model, inputs, spec, keep=keep, description=f"{type(model).__name__} from {target}")


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
