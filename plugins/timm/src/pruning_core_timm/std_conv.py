"""timm's ``ScaledStdConv2d`` (NFNets, NF-RegNets): a convolution with one ``gain`` per output
channel and a ``scale`` of ``gamma / sqrt(fan_in)``, both kept in step with the weight."""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch
from torch import nn

from pruning_core.builtin.handlers.conv import ConvPruner, DepthwiseConvPruner
from pruning_core.layer_handler import keep_indices, param_list, prune_tensor


def _rescale(layer: nn.Module, fan_in_before: int) -> None:
    fan_in = layer.weight[0].numel()
    if isinstance(getattr(layer, "scale", None), float) and fan_in != fan_in_before:
        layer.scale = layer.scale * math.sqrt(fan_in_before / fan_in)


class ScaledStdConvPruner(ConvPruner):
    """Prunes the weight like any convolution, ``gain`` with the output channels, and rescales for the new fan-in."""

    def specialize(self, layer: nn.Module) -> Any:
        return scaled_std_depthwise_handler if ConvPruner.specialize(self, layer) is not self else self

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        size, fan_in = layer.out_channels, layer.weight[0].numel()
        super()._prune_out(layer, idxs)
        prune_tensor(layer, "gain", 0, keep_indices(idxs, size))
        _rescale(layer, fan_in)

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        fan_in = layer.weight[0].numel()
        super()._prune_in(layer, idxs)
        _rescale(layer, fan_in)

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        params = super().channel_params(layer, side)
        return params + param_list((getattr(layer, "gain", None), 0)) if side == "out" else params


class ScaledStdDepthwisePruner(DepthwiseConvPruner):
    """The depthwise case: one channel set, ``gain`` follows it (the fan-in per channel is unchanged)."""

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        size = layer.out_channels
        super()._prune_out(layer, idxs)
        prune_tensor(layer, "gain", 0, keep_indices(idxs, size))

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return super().channel_params(layer, side) + param_list((getattr(layer, "gain", None), 0))


scaled_std_conv_handler = ScaledStdConvPruner()
scaled_std_depthwise_handler = ScaledStdDepthwisePruner()
