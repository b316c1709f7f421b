"""``nn.LayerNorm``: channels are the first normalized dimension."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import CoupledPruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec


class LayerNormPruner(CoupledPruningFunc):
    """Prunes ``weight``/``bias`` and updates ``normalized_shape``."""

    shape_preserving = True  # output shaped like input: meta runs may skip the kernel

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.normalized_shape[0]

    def channel_dim(self, layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
        return tensor.ndim - len(layer.normalized_shape)

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the weight, after it was pruned outside this handler."""
        if layer.weight is not None:
            layer.normalized_shape = tuple(layer.weight.shape)

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.normalized_shape[0])
        prune_tensor(layer, "weight", 0, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.normalized_shape = (keep.numel(),) + tuple(layer.normalized_shape[1:])

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0), (layer.bias, 0))


prune_layernorm_handler = LayerNormPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.LayerNorm, handler=prune_layernorm_handler)]
