"""``nn.GroupNorm``: channels come in ``num_groups`` equal groups."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import CoupledPruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec
from .batchnorm import norm_channel_dim


class GroupNormPruner(CoupledPruningFunc):
    """Prunes ``weight``/``bias``; the graph keeps every group the same size."""

    shape_preserving = True  # output shaped like input: meta runs may skip the kernel
    channel_dim = staticmethod(norm_channel_dim)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_channels

    def channel_groups(self, layer: nn.Module) -> int:
        return layer.num_groups

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the weight, after it was pruned outside this handler."""
        if layer.weight is not None:
            layer.num_channels = layer.weight.shape[0]

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.num_channels)
        prune_tensor(layer, "weight", 0, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.num_channels = keep.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0), (layer.bias, 0))


prune_groupnorm_handler = GroupNormPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.GroupNorm, handler=prune_groupnorm_handler)]
