"""BatchNorm1d/2d/3d and SyncBatchNorm (every ``_BatchNorm``)."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import CoupledPruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec


def norm_channel_dim(layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
    """Channels-first norms: dim 1, or dim 0 for an unbatched 1-d input."""
    return 1 if tensor.ndim >= 2 else 0


def prune_norm_tensors(layer: nn.Module, idxs: torch.Tensor, size: int) -> int:
    """Prune the per-channel tensors every ``_NormBase`` layer may carry; return the new size."""
    keep = keep_indices(idxs, size)
    for name in ("weight", "bias", "running_mean", "running_var"):
        prune_tensor(layer, name, 0, keep)
    return keep.numel()


class BatchNormPruner(CoupledPruningFunc):
    """Input and output channels of BatchNorm are one set: ``prune_in_channels is prune_out_channels``."""

    shape_preserving = True  # output shaped like input: meta runs may skip the kernel
    trace_in_eval = True  # batch statistics change values, not channels; keeps batch-1 tracing working
    channel_dim = staticmethod(norm_channel_dim)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_features

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the tensors, after they were pruned outside this handler."""
        tensor = layer.weight if layer.weight is not None else layer.running_mean
        if tensor is not None:
            layer.num_features = tensor.shape[0]

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        layer.num_features = prune_norm_tensors(layer, idxs, layer.num_features)

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0), (layer.bias, 0))


prune_batchnorm_handler = BatchNormPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.modules.batchnorm._BatchNorm, handler=prune_batchnorm_handler)]
