"""A fast subset of real torchvision models, including the incumbent's known failures."""

from __future__ import annotations

import pytest
import torch
import torchvision

import pruning_core as tp
from pruning_core.testing.oracle import run

MODELS = [
    ("resnet18", 64), ("mobilenet_v3_small", 64), ("shufflenet_v2_x0_5", 64), ("densenet121", 64),
    ("efficientnet_b0", 64), ("regnet_x_400mf", 64), ("convnext_tiny", 64), ("swin_t", 224), ("vit_b_16", 224),
    ("maxvit_t", 224), ("googlenet", 64),
]


@pytest.mark.parametrize("name,size", MODELS, ids=[m[0] for m in MODELS])
def test_prune_half_of_every_group(name, size):
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    reference = run(model, x)
    params_before = sum(p.numel() for p in model.parameters())
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = list(DG.get_all_groups())
    assert groups, "no prunable group"
    for group in groups:
        if group.num_channels > 1:
            group.channel_group(range(0, group.num_channels, 2)).prune()
    out = run(model, x)
    assert out.shape == reference.shape
    params_after = sum(p.numel() for p in model.parameters())
    assert params_after < 0.85 * params_before, (params_before, params_after)


def test_shufflenet_channel_shuffle_groups_are_pruned():
    model = torchvision.models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, 64, 64)
    DG = tp.DependencyGraph().build_dependency(model, x)
    roots = [g.root_slot.target.qualname for g in DG.get_all_groups()]
    # Branch convolutions feeding the channel shuffle are pruned, not refused.
    assert any(r.startswith("stage2") and r.endswith("branch2.5") for r in roots) or \
        any(r.startswith("stage2") for r in roots)
