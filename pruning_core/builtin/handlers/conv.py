"""Convolutions: Conv1d/2d/3d and ConvTranspose1d/2d/3d, grouped and depthwise."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import (BasePruningFunc, CoupledPruningFunc, grouped_removal, keep_indices, param_list,
                              prune_tensor)
from ...records import LayerHandlerSpec

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _channel_dim(layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
    spatial = len(layer.kernel_size)
    return 1 if tensor.ndim == spatial + 2 else 0


def _set_groups(layer: nn.Module) -> None:
    """Keep ``groups`` consistent with the weight after either side was pruned."""
    if layer.transposed:
        per_group_out = layer.weight.shape[1]
        layer.groups = max(1, layer.out_channels // per_group_out)
    else:
        per_group_in = layer.weight.shape[1]
        layer.groups = max(1, layer.in_channels // per_group_in)


def _is_depthwise(layer: nn.Module) -> bool:
    return layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


class ConvPruner(BasePruningFunc):
    """Prunes ``nn.ConvNd`` and ``nn.ConvTransposeNd``; grouped convolutions lose the same
    positions in every group, or whole groups."""

    default_root = True  # a root of DependencyGraph.get_all_groups() by default, as in Torch-Pruning

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    channel_dim = staticmethod(_channel_dim)

    def channel_groups(self, layer: nn.Module) -> int:
        return layer.groups

    def specialize(self, layer: nn.Module) -> Any:
        if _is_depthwise(layer):
            return prune_depthwise_conv_handler
        return self

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the weight, after it was pruned outside this handler."""
        rows, cols = layer.weight.shape[:2]
        if layer.transposed:
            layer.in_channels, layer.out_channels = rows, cols * layer.groups
        else:
            layer.out_channels, layer.in_channels = rows, cols * layer.groups

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        if _is_depthwise(layer):  # called directly (functional API): one channel set, keep groups in step
            prune_depthwise_conv_handler._prune_out(layer, idxs)
            return
        n = layer.out_channels
        keep = keep_indices(idxs, n)
        if layer.transposed:
            self._prune_grouped_weight_dim(layer, idxs, n, dim=1)
        else:
            prune_tensor(layer, "weight", 0, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.out_channels = n - idxs.numel()
        _set_groups(layer)

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        if _is_depthwise(layer):
            prune_depthwise_conv_handler._prune_out(layer, idxs)
            return
        n = layer.in_channels
        if layer.transposed:
            prune_tensor(layer, "weight", 0, keep_indices(idxs, n))
        else:
            self._prune_grouped_weight_dim(layer, idxs, n, dim=1)
        layer.in_channels = n - idxs.numel()
        _set_groups(layer)

    @staticmethod
    def _prune_grouped_weight_dim(layer: nn.Module, idxs: torch.Tensor, total: int, dim: int) -> None:
        """Weight dim ``dim`` holds one group's share of ``total`` channels."""
        groups = layer.groups
        if groups == 1:
            prune_tensor(layer, "weight", dim, keep_indices(idxs, total))
            return
        kind, which = grouped_removal(idxs, total, groups, f"{type(layer).__name__} with groups={groups}")
        if kind == "uniform":
            prune_tensor(layer, "weight", dim, keep_indices(which, total // groups))
        # Whole groups: the weight's other dim loses their rows; this dim is unchanged.

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        # Weight dim 0 lists every channel of one side (out, or in when transposed);
        # dim 1 holds one group's share of the other side.
        bias = layer.bias if side == "out" else None
        if side == ("in" if layer.transposed else "out"):
            return param_list((layer.weight, 0), (bias, 0))
        view = None if layer.groups == 1 else _GroupedView(layer.groups)
        return [(layer.weight, 1, view)] + param_list((bias, 0))

    def linear_form(self, layer: nn.Module) -> Any:
        """Unfolded patches for Conv1d/Conv2d (calibration Gram and compensation); None otherwise."""
        from ...calibration.forms import conv_form

        return conv_form(layer)


class _GroupedView:
    """Lays a grouped conv weight out with one column per channel of its grouped side."""

    def __init__(self, groups: int) -> None:
        self.groups = groups

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        g = self.groups
        full, per = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        # Channel c = group * per + local reads rows of its own group at column `local`.
        blocks = weight.reshape(g, full // g, per, *kernel)
        return blocks.transpose(0, 1).reshape(full // g, g * per, *kernel)


class DepthwiseConvPruner(CoupledPruningFunc):
    """Depthwise convolutions (``groups == in_channels == out_channels``): input and output are one channel set."""

    default_root = True  # a root of DependencyGraph.get_all_groups() by default, as in Torch-Pruning

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    channel_dim = staticmethod(_channel_dim)

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        n = layer.out_channels
        keep = keep_indices(idxs, n)
        prune_tensor(layer, "weight", 0, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.out_channels = layer.in_channels = layer.groups = n - idxs.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 0), (layer.bias, 0))

    linear_form = ConvPruner.linear_form


prune_conv_handler = ConvPruner()
prune_depthwise_conv_handler = DepthwiseConvPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=cls, handler=prune_conv_handler) for cls in _CONV_TYPES]
