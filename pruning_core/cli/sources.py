"""Turning a model spec from the command line into a model, through the plugins."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigurationError
from ..records import ModelSource

# Schemes shipped by optional plugin distributions, for the error message when they are missing.
OPTIONAL_SCHEMES = {"hf": "hf", "timm": "timm", "yolo": "yolo"}


def resolve(spec: str, input_shape: Optional[str] = None) -> ModelSource:
    from .._plugins import get_hub

    hub = get_hub()
    source = hub.resolve_model_spec(spec)
    if source is None:
        scheme = spec.partition(":")[0]
        known = sorted({s.scheme for s in hub.model_schemes()})
        examples = ", ".join(s.example for s in hub.model_schemes())
        hint = ""
        if scheme in OPTIONAL_SCHEMES and scheme not in known:
            hint = f' The {scheme!r} scheme comes with the plugin extra: pip install "pruning-core[{OPTIONAL_SCHEMES[scheme]}]".'
        raise ConfigurationError(f"unknown model spec {spec!r}. Known schemes: {', '.join(known)} "
                                 f"(for example {examples}).{hint}")
    if input_shape:
        try:
            shape = [int(part) for part in input_shape.replace("x", ",").split(",") if part.strip()]
        except ValueError:
            raise ConfigurationError(f"--input-shape must look like 1,3,224,224, got {input_shape!r}") from None
        source.example_inputs = torch.randn(*shape)
    if source.example_inputs is None:
        raise ConfigurationError(f"{spec} gives no example inputs; pass --input-shape (for example 1,3,224,224)")
    return source


def random_like(inputs: Any) -> Any:
    """A calibration batch shaped like the example inputs (token ids stay valid ids)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point():
            return torch.randn_like(inputs)
        high = int(inputs.max()) + 1 if inputs.numel() else 2
        return torch.randint(0, max(high, 2), inputs.shape, dtype=inputs.dtype, device=inputs.device)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(random_like(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: random_like(v) for k, v in inputs.items()}
    return inputs


def run_model(source: ModelSource, inputs: Any) -> Any:
    model = source.model
    if source.forward_fn is not None:
        return source.forward_fn(model, inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)
