"""``nn.Linear`` (and subclasses such as ``NonDynamicallyQuantizableLinear``)."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import BasePruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec


class LinearPruner(BasePruningFunc):
    """Prunes rows (outputs) or columns (inputs) of a linear layer's weight."""

    default_root = True  # a root of DependencyGraph.get_all_groups() by default, as in Torch-Pruning

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_features

    def channel_dim(self, layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
        return tensor.ndim - 1

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the weight, after it was pruned outside this handler."""
        layer.out_features, layer.in_features = layer.weight.shape

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.out_features)
        prune_tensor(layer, "weight", 0, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.out_features = keep.numel()

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.in_features)
        prune_tensor(layer, "weight", 1, keep)
        layer.in_features = keep.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        if side == "out":
            return param_list((layer.weight, 0), (layer.bias, 0))
        return param_list((layer.weight, 1))

    def linear_form(self, layer: nn.Module) -> Any:
        """``y = x @ W.T + b`` (calibration Gram and compensation)."""
        from ...calibration.forms import dense_form

        return dense_form(layer)


prune_linear_handler = LinearPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.Linear, handler=prune_linear_handler)]
