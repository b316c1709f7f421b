"""Torch-Pruning's recipe for a hand-written ViT: ``num_heads={m.qkv: m.num_heads}``, then after pruning
``m.num_heads = pruner.num_heads[m.qkv]`` and ``m.head_dim = m.qkv.out_features // (3 * m.num_heads)``.

The forward reads ``self.num_heads`` and ``self.head_dim``; the pruner follows them (it checks every
step with a forward, before the user's loop runs) and exposes ``pruner.num_heads`` as Torch-Pruning does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp


class Attention(nn.Module):
    def __init__(self, dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class ViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.attns = nn.ModuleList(Attention(dim, heads) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                  for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        for attn, mlp in zip(self.attns, self.mlps):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x.mean(1))


MODES = {
    "head dims": dict(prune_head_dims=True),
    "whole heads": dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5),
    "both": dict(prune_num_heads=True, prune_head_dims=True, head_pruning_ratio=0.5),
}


def prune(mode: str, heads: int, validate: bool = True):
    torch.manual_seed(0)
    model, x = ViT(dim=8 * heads, heads=heads).eval(), torch.randn(2, 3, 16, 16)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.head], validate=validate,
                                  num_heads={m.qkv: m.num_heads for m in model.attns}, **MODES[mode])
    pruner.step()
    return model, x, pruner


@pytest.mark.parametrize("heads", [4, 3])  # 3 heads: as many as the parts q, k, v that the code unbinds
@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_recipe_prunes_attention_as_without_the_check_and_keeps_the_attributes_in_step(mode, heads):
    model, x, pruner = prune(mode, heads)
    unchecked, _, unchecked_pruner = prune(mode, heads, validate=False)  # Torch-Pruning's behaviour: no check
    widths = [m.qkv.out_features for m in model.attns]
    assert widths == [m.qkv.out_features for m in unchecked.attns] and max(widths) < 3 * 8 * heads
    for m in model.attns:  # already right before the user's own update
        assert m.num_heads == pruner.num_heads[m.qkv] == unchecked_pruner.num_heads[unchecked.attns[0].qkv]
        assert m.head_dim == m.qkv.out_features // (3 * m.num_heads)
    expected_heads = heads - heads // 2 if mode in ("whole heads", "both") else heads
    assert [pruner.num_heads[m.qkv] for m in model.attns] == [expected_heads] * 2
    head_dim = 8 if mode == "whole heads" else 4  # the head dims are halved unless only whole heads go
    assert [(m.num_heads, m.head_dim) for m in model.attns] == [(expected_heads, head_dim)] * 2
    for m in model.attns:  # the recipe's loop changes nothing, and the model runs
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_without_num_heads_the_attention_block_is_kept_whole():
    torch.manual_seed(0)
    model, x = ViT().eval(), torch.randn(2, 3, 16, 16)
    pruner = tp.pruner.MetaPruner(model, x, pruning_ratio=0.5, ignored_layers=[model.head])
    pruner.step()
    assert [m.qkv.out_features for m in model.attns] == [96, 96] and pruner.num_heads == {}
    assert [(m.num_heads, m.head_dim) for m in model.attns] == [(4, 8), (4, 8)]
