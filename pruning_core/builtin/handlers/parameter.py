"""Raw parameters and buffers used directly in a forward pass (``cls_token``, ``Scale.scale``...)."""

from __future__ import annotations

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import as_index_tensor, keep_indices, select
from ...records import LayerHandlerSpec


class ParameterPruner:
    """Prunes a tensor along one dimension.

    ``prune_out_channels(tensor, idxs)`` removes along dim 0 and
    ``prune_in_channels(tensor, idxs)`` along dim 1; both return a new
    ``nn.Parameter`` (plain tensors stay plain).

    Registered for ``torch.Tensor`` (parameters and buffers), so a dependency graph shows
    these functions as the handler of a raw tensor used directly in a forward pass; the
    graph itself prunes such tensors by selecting along the traced dimension.
    """

    name = "parameter"

    def get_out_channels(self, tensor: torch.Tensor) -> int:
        return tensor.shape[0]

    def get_in_channels(self, tensor: torch.Tensor) -> int:
        return tensor.shape[1]

    def _prune(self, tensor: torch.Tensor, idxs, dim: int) -> torch.Tensor:
        checked = as_index_tensor(idxs, tensor.shape[dim], f"parameter of shape {tuple(tensor.shape)} dim {dim}")
        kept = select(tensor, dim, keep_indices(checked, tensor.shape[dim]))
        if isinstance(tensor, nn.Parameter):
            return nn.Parameter(kept, requires_grad=tensor.requires_grad)
        return kept

    def prune_out_channels(self, tensor: torch.Tensor, idxs, dim: int = 0) -> torch.Tensor:
        return self._prune(tensor, idxs, dim)

    def prune_in_channels(self, tensor: torch.Tensor, idxs, dim: int = 1) -> torch.Tensor:
        return self._prune(tensor, idxs, dim)

    def __repr__(self) -> str:
        return "ParameterPruner()"


prune_parameter_handler = ParameterPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=torch.Tensor, handler=prune_parameter_handler)]
