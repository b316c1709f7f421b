"""Model code written with einops: sizes einops works out from shapes follow pruning, layer by layer.

einops caches what it computes from a shape; while tracing, a cached size would measure the first
layer that computed it (tying later layers of equal size to it) or a tensor of an earlier graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.testing.oracle import oracle_check

einops = pytest.importorskip("einops")


class Attention(nn.Module):
    """Heads split and merged by ``rearrange`` with only the head count given, as in vit-pytorch."""

    def __init__(self, dim: int = 32, heads: int = 4, dim_head: int = 8) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x):
        q, k, v = (einops.rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.to_qkv(x).chunk(3, -1))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
        return self.to_out(einops.rearrange(attn @ v, "b h n d -> b n (h d)"))


class Net(nn.Module):
    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.blocks = nn.ModuleList(Attention() for _ in range(depth))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean(1))


def qkv_groups(model: Net, x: torch.Tensor):
    DG = tp.DependencyGraph().build_dependency(model, x)
    found = []
    for group in DG.get_all_groups():
        if any("to_qkv" in dep.target.qualname and dep.handler == tp.prune_linear_out_channels for dep, _ in group):
            found.append(sorted({dep.target.qualname for dep, _ in group}))
    return found


def test_each_layer_keeps_its_own_head_size_and_a_second_graph_sees_the_same():
    model, x = Net().eval(), torch.randn(2, 6, 12)
    expected = [["blocks.0.to_out", "blocks.0.to_qkv"], ["blocks.1.to_out", "blocks.1.to_qkv"]]
    assert sorted(qkv_groups(model, x)) == expected
    assert sorted(qkv_groups(model, x)) == expected  # nothing cached from the first graph


def test_pruning_an_einops_head_size_equals_zeroing_it_and_the_model_trains():
    model, x = Net().eval(), torch.randn(2, 6, 12)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.blocks[1].to_qkv,
                                                                       tp.prune_linear_out_channels, [3]))
    rows = [sorted(idxs) for dep, idxs in group if dep.target.qualname == "blocks.1.to_qkv"]
    assert rows == [[3, 11, 19, 27, 35, 43, 51, 59, 67, 75, 83, 91]]  # dim 3 of every head of q, k and v
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert [b.to_qkv.out_features for b in model.blocks] == [48, 48]  # four heads of 4 dims, in q, k and v
    model.train()
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
