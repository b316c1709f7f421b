"""The ``timm:NAME`` model spec: a timm architecture with random weights."""

from __future__ import annotations

import torch

from pruning_core import ConfigurationError, ModelSource

from .blocks import final_classifiers


def resolve(spec: str) -> ModelSource:
    import timm

    name = spec.partition(":")[2]
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:5]
        raise ConfigurationError(f"timm has no model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    model = timm.create_model(name, pretrained=False).eval()
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    keep = tuple(final_classifiers(model))  # distilled models have two
    return ModelSource(model, torch.randn(1, *size), spec, keep=keep, description=f"timm {name} (random weights)")
