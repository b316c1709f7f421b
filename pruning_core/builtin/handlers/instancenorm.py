"""InstanceNorm1d/2d/3d (every ``_InstanceNorm``)."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import CoupledPruningFunc, param_list
from ...records import LayerHandlerSpec
from .batchnorm import norm_channel_dim, prune_norm_tensors


class InstanceNormPruner(CoupledPruningFunc):
    """Prunes the optional affine parameters and running statistics of instance norms."""

    shape_preserving = True  # output shaped like input: meta runs may skip the kernel
    trace_in_eval = True

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_features

    def channel_dim(self, layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
        # InstanceNorm accepts unbatched (C, *spatial) inputs too.
        spatial = {"InstanceNorm1d": 1, "InstanceNorm2d": 2, "InstanceNorm3d": 3}.get(
            type(layer).__name__, tensor.ndim - 2)
        return 0 if tensor.ndim == spatial + 1 else norm_channel_dim(layer, tensor, side)

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        layer.num_features = prune_norm_tensors(layer, idxs, layer.num_features)

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0), (layer.bias, 0))


prune_instancenorm_handler = InstanceNormPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.modules.instancenorm._InstanceNorm, handler=prune_instancenorm_handler)]
