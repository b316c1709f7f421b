"""Raw parameters and buffers used directly in a forward pass (``cls_token``, ``Scale.scale``...)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...layer_handler import as_index_tensor, keep_indices, replace_tensor, select


class ParameterPruner:
    """Prunes a tensor along one dimension.

    ``prune_out_channels(tensor, idxs)`` removes along dim 0 and
    ``prune_in_channels(tensor, idxs)`` along dim 1; both return a new
    ``nn.Parameter`` (plain tensors stay plain). Inside a dependency graph,
    :meth:`prune_attribute` also puts the result back on its module.
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

    def prune_attribute(self, owner: nn.Module, attr: str, dim: int, idxs: torch.Tensor) -> None:
        tensor: Optional[torch.Tensor] = getattr(owner, attr)
        replace_tensor(owner, attr, select(tensor, dim, keep_indices(idxs, tensor.shape[dim])))

    def __repr__(self) -> str:
        return "ParameterPruner()"


prune_parameter_handler = ParameterPruner()
