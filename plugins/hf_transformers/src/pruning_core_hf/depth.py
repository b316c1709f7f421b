"""Depth pruning: remove whole encoder or decoder layers, least useful first.

A layer's usefulness is its *block influence* (ShortGPT): one minus the cosine
similarity between its input and output hidden states, averaged over the
calibration tokens. A layer that barely changes its input can go.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

from pruning_core import ConfigurationError

LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer")


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The longest ``nn.ModuleList`` of same-class blocks: the model's layers."""
    best: Optional[nn.ModuleList] = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ConfigurationError(f"{type(model).__name__} has no stack of repeated layers to remove layers from")
    return best


def block_stack_hints(model: nn.Module) -> List[Any]:
    """The encoder or decoder layers as a ``BlockStack``, so calibration can go layer by layer."""
    from pruning_core.records import BlockStack

    try:
        return [BlockStack(module=layer_stack(model))]
    except ConfigurationError:
        return []


def _hidden(value: Any) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[Any],
                    forward: Optional[Callable[[nn.Module, Any], Any]] = None) -> List[float]:
    """Mean ``1 - cos(input, output)`` of every layer over the calibration batches."""
    layers = layer_stack(model)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)
    handles = []

    def make_hook(index: int):
        def hook(module, args, kwargs, output):
            x = _hidden(args[0] if args else kwargs.get("hidden_states"))
            y = _hidden(output)
            if x is None or y is None or x.shape != y.shape:
                return
            cos = torch.nn.functional.cosine_similarity(x.flatten(0, -2).float(), y.flatten(0, -2).float(), dim=-1)
            sums[index] += float((1 - cos).sum())
            counts[index] += cos.numel()
        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(make_hook(index), with_kwargs=True))
    try:
        model.eval()
        for batch in batches:
            if forward is not None:
                forward(model, batch)
            elif isinstance(batch, dict):
                model(**batch)
            else:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    if not any(counts):
        raise ConfigurationError("no calibration batch reached the layers; pass batches the model accepts")
    return [s / max(1, c) for s, c in zip(sums, counts)]


def remove_layers(model: nn.Module, indices: Sequence[int]) -> List[int]:
    """Delete layers by index; renumber ``layer_idx`` and update the config. Returns the kept indices."""
    layers = layer_stack(model)
    drop = set(int(i) for i in indices)
    if not drop:
        return list(range(len(layers)))
    if any(i < 0 or i >= len(layers) for i in drop):
        raise ConfigurationError(f"layer indices must be in 0..{len(layers) - 1}, got {sorted(drop)}")
    if len(drop) >= len(layers):
        raise ConfigurationError("removing every layer would leave no model; keep at least one")
    kept = [i for i in range(len(layers)) if i not in drop]
    new_layers = [layers[i] for i in kept]
    for position, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    for position in range(len(layers) - 1, -1, -1):
        del layers[position]
    for layer in new_layers:
        layers.append(layer)
    config = getattr(model, "config", None)
    if config is not None:
        for field in LAYER_COUNT_FIELDS:
            if isinstance(getattr(config, field, None), int):
                setattr(config, field, len(kept))
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == len(kept) + len(drop):
            config.layer_types = [layer_types[i] for i in kept]
    return kept


def prune_layers(model: nn.Module, batches: Iterable[Any], num_layers: Optional[int] = None,
                 ratio: Optional[float] = None, forward: Optional[Callable[[nn.Module, Any], Any]] = None
                 ) -> List[int]:
    """Remove the ``num_layers`` (or ``ratio`` of the) layers with the lowest block influence.

    Returns the removed indices. The model keeps working with stock transformers:
    ``save_pretrained`` then ``from_pretrained`` rebuild it.
    """
    total = len(layer_stack(model))
    if (num_layers is None) == (ratio is None):
        raise ConfigurationError("pass exactly one of num_layers or ratio")
    if ratio is not None:
        if not 0 <= ratio < 1:
            raise ConfigurationError(f"ratio must be in [0, 1), got {ratio}")
        num_layers = int(total * ratio)
    if not 0 <= num_layers < total:
        raise ConfigurationError(f"num_layers must be in 0..{total - 1}, got {num_layers}")
    scores = block_influence(model, batches, forward)
    order = sorted(range(total), key=lambda i: scores[i])
    removed = sorted(order[:num_layers])
    remove_layers(model, removed)
    return removed
