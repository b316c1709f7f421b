"""YOLO11's position-sensitive ``Attention``, pruned as one layer.

Its forward reshapes the values back to ``(B, C, H, W)`` with ``C`` taken from
the input, so the value channels (``num_heads * head_dim``) must always equal
the block's width. The handler therefore treats the block like a norm layer:
one channel set, the same on input and output, and removing channel ``i``
also removes value channel ``i`` (``head_dim`` shrinks; queries and keys keep
``key_dim``). The plugin declares the heads as a structure hint, so every head
loses the same number of channels.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn

from pruning_core import BasePruningFunc, InvalidIndicesError
from pruning_core.functional import (prune_batchnorm_out_channels, prune_conv_in_channels,
                                     prune_conv_out_channels)
from pruning_core.layer_handler import param_list


def _prune_conv_block(block: nn.Module, out_idxs: List[int], in_idxs: List[int]) -> None:
    """An ultralytics ``Conv`` (conv + BN + activation)."""
    if out_idxs:
        prune_conv_out_channels(block.conv, out_idxs)
        if isinstance(getattr(block, "bn", None), nn.BatchNorm2d):  # fused models have no BN
            prune_batchnorm_out_channels(block.bn, out_idxs)
    if in_idxs and block.conv.groups == 1:
        prune_conv_in_channels(block.conv, in_idxs)


class PSAAttentionPruner(BasePruningFunc):
    """Prunes ``ultralytics.nn.modules.block.Attention`` along its width."""

    shape_preserving = True

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.conv.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        heads, head_dim, key_dim = layer.num_heads, layer.head_dim, layer.key_dim
        removed = idxs.tolist()
        per_head = [sum(1 for i in removed if h * head_dim <= i < (h + 1) * head_dim) for h in range(heads)]
        if len(set(per_head)) != 1:
            raise InvalidIndicesError(
                f"Attention with {heads} heads: every head must lose the same number of channels, got {per_head}; "
                "prune it through the pruner or a DependencyGraph group, which keep heads equal")
        if per_head[0] >= head_dim:
            raise InvalidIndicesError(f"Attention: removing {per_head[0]} of {head_dim} channels per head empties it")
        step = 2 * key_dim + head_dim
        # Value row of channel i = h * head_dim + d sits at h * step + 2 * key_dim + d in qkv's output.
        value_rows = [(i // head_dim) * step + 2 * key_dim + i % head_dim for i in removed]
        _prune_conv_block(layer.qkv, value_rows, removed)
        _prune_conv_block(layer.pe, removed, [])  # depthwise: the conv handler keeps groups in step
        _prune_conv_block(layer.proj, removed, removed)
        layer.head_dim = head_dim - per_head[0]

    _prune_in = _prune_out
    prune_in_channels = BasePruningFunc.prune_out_channels

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        return param_list((layer.qkv.conv.weight, 1), (layer.proj.conv.weight, 0), (layer.pe.conv.weight, 0))


prune_psa_attention_handler = PSAAttentionPruner()
