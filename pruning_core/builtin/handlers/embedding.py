"""``nn.Embedding``: output channels are ``embedding_dim``; input channels are table rows."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import BasePruningFunc, keep_indices, param_list, prune_tensor
from ...records import LayerHandlerSpec


class EmbeddingPruner(BasePruningFunc):
    """Prunes embedding columns (``embedding_dim``) or rows (``num_embeddings``)."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embedding_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.num_embeddings

    def refresh_attributes(self, layer: nn.Module) -> None:
        """Sizes from the weight, after it was pruned outside this handler."""
        layer.num_embeddings, layer.embedding_dim = layer.weight.shape

    def tensor_channel_dims(self, layer: nn.Module, inputs: Any, outputs: Any):
        # The input holds indices, not channels: rows are never linked to a tensor.
        return [], ([(0, outputs[0].ndim - 1)] if outputs else [])

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.embedding_dim)
        prune_tensor(layer, "weight", 1, keep)
        layer.embedding_dim = keep.numel()

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.num_embeddings)
        prune_tensor(layer, "weight", 0, keep)
        if layer.padding_idx is not None:
            padding = int(layer.padding_idx)
            if padding in idxs.tolist():
                layer.padding_idx = None
            else:
                layer.padding_idx = padding - int((idxs < padding).sum())
        layer.num_embeddings = keep.numel()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.weight, 1 if side == "out" else 0))


prune_embedding_handler = EmbeddingPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.Embedding, handler=prune_embedding_handler)]
