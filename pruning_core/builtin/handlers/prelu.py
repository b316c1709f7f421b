"""``nn.PReLU`` with one slope per channel (a single shared slope has no channels)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import CoupledPruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec


class PReLUPruner(CoupledPruningFunc):
    """Prunes the per-channel slopes."""

    shape_preserving = True  # output shaped like input: meta runs may skip the kernel

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_parameters

    def channel_dim(self, layer: nn.Module, tensor: torch.Tensor, side: str) -> Optional[int]:
        if layer.num_parameters == 1:
            return None  # one shared slope: element-wise, no channel link
        return 1 if tensor.ndim >= 2 else 0

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        if layer.num_parameters == 1:
            return
        keep = keep_indices(idxs, layer.num_parameters)
        prune_tensor(layer, "weight", 0, keep)
        layer.num_parameters = keep.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0)) if layer.num_parameters > 1 else []


prune_prelu_handler = PReLUPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.PReLU, handler=prune_prelu_handler)]
