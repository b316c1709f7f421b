"""``nn.MultiheadAttention``: the embedding dim is ``num_heads`` heads of ``head_dim``."""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from ...errors import InvalidIndicesError
from ...hookspecs import hookimpl
from ...layer_handler import (CoupledPruningFunc, block_indices, grouped_removal, keep_indices, param_list,
                              prune_tensor)
from ...records import LayerHandlerSpec


class _Stacked:
    """Maps a (3E, ...) q/k/v stack to (E, 3, ...) so that dim 0 lists channels."""

    def __init__(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(3, self.embed_dim, *tensor.shape[1:]).transpose(0, 1)


class MultiheadAttentionPruner(CoupledPruningFunc):
    """Prunes the embedding dim of q, k, v, the output projection and the bias tokens.

    The graph keeps heads equal-sized: it sees ``embed_dim`` as ``num_heads x head_dim``.
    """

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def channel_groups(self, layer: nn.Module) -> int:
        return layer.num_heads

    def tensor_channel_dims(self, layer: nn.Module, inputs: Any, outputs: Any):
        ins = [(0, inputs[0].ndim - 1)]
        if layer.kdim == layer.embed_dim and len(inputs) > 1:
            ins.append((1, inputs[1].ndim - 1))
        if layer.vdim == layer.embed_dim and len(inputs) > 2:
            ins.append((2, inputs[2].ndim - 1))
        return ins, [(0, outputs[0].ndim - 1)]

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        size = layer.embed_dim
        new_size = size - idxs.numel()
        heads = layer.num_heads
        try:
            kind, which = grouped_removal(idxs, size, heads, "MultiheadAttention embed_dim")
        except InvalidIndicesError:
            kind, which = "mixed", idxs
        if kind == "groups":
            heads -= which.numel()  # whole heads removed
        elif new_size % heads:
            raise InvalidIndicesError(
                f"MultiheadAttention embed_dim {size} -> {new_size} is not divisible by num_heads={heads}; "
                "remove whole heads or the same positions in every head")
        keep = keep_indices(idxs, size)
        keep3 = block_indices(keep, size, 3)
        if layer._qkv_same_embed_dim:
            prune_tensor(layer, "in_proj_weight", 0, keep3)
            prune_tensor(layer, "in_proj_weight", 1, keep)
        else:
            prune_tensor(layer, "q_proj_weight", 0, keep)
            prune_tensor(layer, "q_proj_weight", 1, keep)
            for name, width in (("k_proj_weight", layer.kdim), ("v_proj_weight", layer.vdim)):
                prune_tensor(layer, name, 0, keep)
                if width == size:  # the key (value) input is then embed_dim wide and pruned with it
                    prune_tensor(layer, name, 1, keep)
        prune_tensor(layer, "in_proj_bias", 0, keep3)
        prune_tensor(layer, "bias_k", 2, keep)
        prune_tensor(layer, "bias_v", 2, keep)
        out = layer.out_proj
        prune_tensor(out, "weight", 0, keep)
        prune_tensor(out, "weight", 1, keep)
        prune_tensor(out, "bias", 0, keep)
        out.in_features = out.out_features = new_size
        if layer.kdim == size:
            layer.kdim = new_size
        if layer.vdim == size:
            layer.vdim = new_size
        layer.embed_dim = new_size
        layer.num_heads = heads
        layer.head_dim = new_size // heads

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        size = layer.embed_dim
        stacked = _Stacked(size)
        params: List[Tuple[torch.Tensor, int, Any]] = []
        if layer._qkv_same_embed_dim:
            params += [(layer.in_proj_weight, 0, stacked), (layer.in_proj_weight, 1, None)]
        else:
            params += param_list((layer.q_proj_weight, 0), (layer.q_proj_weight, 1), (layer.k_proj_weight, 0),
                                 (layer.v_proj_weight, 0))
            params += param_list(*[(weight, 1) for weight, width in ((layer.k_proj_weight, layer.kdim),
                                                                      (layer.v_proj_weight, layer.vdim)) if width == size])
        if layer.in_proj_bias is not None:
            params.append((layer.in_proj_bias, 0, stacked))
        params += param_list((layer.out_proj.weight, 0), (layer.out_proj.weight, 1), (layer.out_proj.bias, 0))
        return params


prune_multihead_attention_handler = MultiheadAttentionPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=nn.MultiheadAttention, handler=prune_multihead_attention_handler)]
