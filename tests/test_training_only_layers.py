"""Layers that run only in training mode (auxiliary heads) are traced in training mode and pruned too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.testing.oracle import oracle_check


class WithAuxHead(nn.Module):
    """GoogLeNet-style: an auxiliary classifier reads a middle feature map, in training mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.aux = nn.Sequential(nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 16, 10))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        mid = self.stem(x)
        logits = self.fc(self.body(mid).mean((2, 3)))
        if self.training:
            return logits, self.aux(mid)
        return logits


def test_an_auxiliary_head_is_pruned_with_the_channels_it_reads():
    model, x = WithAuxHead().eval(), torch.randn(2, 3, 4, 4)
    running = [b.clone() for b in model.buffers()]
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.stem[0].out_channels == 8 and model.aux[0].in_channels == 8
    assert model.aux[0].out_channels == 4 and model.aux[2].in_features == 4 * 16
    assert model.aux[2].out_features == 10  # an output of the training-mode forward: kept
    assert not model.training and not any(m.training for m in model.modules())  # modes put back
    assert all(b.shape != r.shape or torch.equal(b, r) for b, r in zip(model.buffers(), running))
    model.train()
    logits, aux = model(x)
    (logits.sum() + aux.sum()).backward()
    assert logits.shape == aux.shape == (2, 10)


def test_pruning_the_stem_equals_zeroing_it_in_eval_mode():
    model, x = WithAuxHead().eval(), torch.randn(2, 3, 4, 4)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem[0], tp.prune_conv_out_channels, [2, 5]))
    # the auxiliary head's first convolution reads the stem: it loses the same input channels
    assert sum(1 for dep, idxs in group if dep.handler == tp.prune_conv_in_channels and sorted(idxs) == [2, 5]) == 2


def test_a_layer_no_mode_reaches_is_still_named_in_a_warning():
    class Unused(WithAuxHead):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(4, 4)

    with pytest.warns(tp.pruner.PruningWarning, match="spare"):
        tp.DependencyGraph().build_dependency(Unused().eval(), torch.randn(2, 3, 4, 4))
