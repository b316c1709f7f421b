"""How pruning_core calls a model with example inputs (tracing, verification, measurements)."""

from __future__ import annotations

import collections.abc

from typing import Any, Callable, Optional

from torch import nn

ForwardFn = Optional[Callable[[nn.Module, Any], Any]]


def call_model(model: nn.Module, inputs: Any, forward_fn: ForwardFn = None) -> Any:
    """``forward_fn(model, inputs)`` if given; else the model called with the inputs unpacked
    (a mapping as keywords, a list or tuple as positional arguments, anything else as one argument)."""
    if forward_fn is not None:
        return forward_fn(model, inputs)
    if isinstance(inputs, collections.abc.Mapping):  # dicts, and HF BatchEncoding
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)
