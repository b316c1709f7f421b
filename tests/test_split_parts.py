"""A tensor split into a fixed number of equal parts keeps that number: only the parts' widths are pruned.

TinyViT's attention views q, k and v per head and splits them apart
(``qkv.view(B, N, heads, -1).split([kd, kd, vd], dim=3)``, its sizes followed by the timm plugin);
declaring the heads must not make the
number of parts prunable, or pruning removes a whole part and the unpacking ``q, k, v = ...`` fails.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pruning_core as tp


class PartsPerHead(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, part: int = 8, chunk: bool = False) -> None:
        super().__init__()
        self.heads, self.part, self.chunk = heads, part, chunk
        self.qkv = nn.Linear(dim, heads * 3 * part)
        self.proj = nn.Linear(heads * part, dim)

    def forward(self, x):
        B, N, _ = x.shape
        per_head = self.qkv(x).view(B, N, self.heads, -1)
        if self.chunk:
            q, k, v = per_head.chunk(3, dim=3)
        else:
            part = per_head.shape[-1] // 3  # read from the shape, so it follows pruning
            q, k, v = per_head.split([part, part, part], dim=3)
        attn = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).softmax(-1)
        out = (attn @ v.transpose(1, 2)).transpose(1, 2)
        return self.proj(out.reshape(B, N, -1))


@pytest.mark.parametrize("chunk", [False, True], ids=["split", "chunk"])
def test_declared_heads_never_make_the_number_of_parts_prunable(chunk):
    torch.manual_seed(0)
    model = PartsPerHead(chunk=chunk).eval()
    x = torch.randn(2, 5, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                           num_heads={model.qkv: 4}, ignored_layers=[model.proj])
        sizes = set()
        for group in pruner.step(interactive=True):
            sizes.update(len(idxs) for dep, idxs in group if dep.target.module is model.qkv)
            group.prune()
    assert not [w for w in caught if "could not be pruned" in str(w.message)]
    # every group removes the same positions from each of the 4 heads' 3 parts: no whole part goes
    assert sizes and all(size % 12 == 0 for size in sizes)
    assert model.qkv.out_features < 4 * 3 * 8 and model.qkv.out_features % 12 == 0
    assert model(x).shape == (2, 5, 16)
