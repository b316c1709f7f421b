"""The ``yolo:NAME`` model spec: an Ultralytics model from a bundled YAML config (random weights)."""

from __future__ import annotations

import torch

from pruning_core import ConfigurationError, ModelSource


def resolve(spec: str) -> ModelSource:
    """``yolo:yolo11n.yaml`` builds the architecture with random weights; nothing is downloaded."""
    from ultralytics import YOLO

    name = spec.partition(":")[2]
    if not name.endswith((".yaml", ".yml")):
        raise ConfigurationError(f"{spec!r}: give an ultralytics model YAML, for example yolo:yolo11n.yaml "
                                 "(checkpoints would be downloaded or unpickled; load them yourself)")
    try:
        wrapper = YOLO(name, verbose=False)
    except FileNotFoundError as error:
        raise ConfigurationError(f"{spec!r}: ultralytics has no bundled config {name!r} ({error})") from error
    model = wrapper.model.eval()
    from .blocks import structure_hints

    keep = tuple(h.module for h in structure_hints(model) if h.keep)
    return ModelSource(model, torch.randn(1, 3, 640, 640), spec, keep=keep,
                       description=f"ultralytics {name} (random weights)")
