"""GPT-2's ``Conv1D``: a linear layer whose weight is stored transposed, ``(in, out)``."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from pruning_core import BasePruningFunc
from pruning_core.layer_handler import keep_indices, param_list, prune_tensor


class Conv1DPruner(BasePruningFunc):
    """Prunes ``transformers.pytorch_utils.Conv1D``: outputs are weight columns, inputs weight rows."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    def channel_dim(self, layer: nn.Module, tensor: torch.Tensor, side: str) -> int:
        return tensor.ndim - 1

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.weight.shape[1])
        prune_tensor(layer, "weight", 1, keep)
        prune_tensor(layer, "bias", 0, keep)
        layer.nf = keep.numel()

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.weight.shape[0])
        prune_tensor(layer, "weight", 0, keep)
        if hasattr(layer, "nx"):
            layer.nx = keep.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        if side == "out":
            return param_list((layer.weight, 1), (layer.bias, 0))
        return param_list((layer.weight, 0))

    def linear_form(self, layer: nn.Module) -> Any:
        """``y = x @ W + b`` with the weight stored ``(in, out)`` (calibration Gram and compensation)."""
        from pruning_core.calibration import dense_form

        return dense_form(layer, transposed=True)

    def refresh_attributes(self, layer: nn.Module) -> None:
        layer.nf = layer.weight.shape[1]
        if hasattr(layer, "nx"):
            layer.nx = layer.weight.shape[0]


conv1d_handler = Conv1DPruner()
