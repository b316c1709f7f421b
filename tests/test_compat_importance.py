"""Importance criteria as Torch-Pruning defines them: unreduced scores, the 'gate' reduction, OBDC."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).eval()


def _group(model, idxs=(0, 1, 2, 3, 4, 5)):
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 3, 8, 8))
    return DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(idxs))


def _by_hand(model, idxs):
    """L1 of each member's slice of each channel: conv0 rows, bn0 gamma, bn0 beta (bias=True), conv3 columns."""
    conv0, bn, conv3 = model[0], model[1], model[3]
    rows = [conv0.weight.abs().sum((1, 2, 3)), conv0.bias.abs(), bn.weight.abs(), bn.bias.abs(),
            conv3.weight.abs().sum((0, 2, 3))]
    return torch.stack([r[list(idxs)] for r in rows]).detach()


def test_no_group_reduction_returns_every_members_scores():
    model = _model()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1, 1)
    idxs = (1, 3, 4)
    imp = tp.importance.MagnitudeImportance(p=1, group_reduction=None, normalizer=None, bias=True)
    scores = imp(_group(model, idxs))
    expected = _by_hand(model, idxs)
    assert scores.shape == (5, 3)
    # Member order is the group's; compare as a set of rows.
    for row in expected:
        assert any(torch.allclose(row, got, rtol=1e-5, atol=1e-6) for got in scores), row
    mean = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None, bias=True)
    torch.testing.assert_close(mean(_group(model, idxs)), scores.mean(0))


def test_gate_keeps_the_last_members_scores_and_first_the_first():
    model = _model()
    stacked = tp.importance.MagnitudeImportance(p=2, group_reduction=None, normalizer=None)(_group(model))
    gate = tp.importance.MagnitudeImportance(p=2, group_reduction="gate", normalizer=None)(_group(model))
    first = tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)(_group(model))
    torch.testing.assert_close(gate, stacked[-1])
    torch.testing.assert_close(first, stacked[0])
    assert not torch.allclose(gate, first)
    with pytest.raises(tp.ConfigurationError, match="gate"):
        tp.importance.MagnitudeImportance(group_reduction="gates")


def test_unreduced_lamp_is_normalized_per_member():
    model = _model()
    raw = tp.importance.MagnitudeImportance(group_reduction=None, normalizer=None)(_group(model))
    lamp = tp.importance.MagnitudeImportance(group_reduction=None, normalizer="lamp")(_group(model))
    for row_raw, row_lamp in zip(raw, lamp):
        torch.testing.assert_close(row_lamp, tp.importance.lamp_transform(row_raw))


# -- OBDC --------------------------------------------------------------------------------------
def _fisher_by_hand(model, batches, layer):
    """Squared per-sample weight gradients, summed over samples and divided by the number of batches."""
    total, count = torch.zeros_like(layer.weight), 0
    for x, y in batches:
        for n in range(x.shape[0]):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[n:n + 1]), y[n:n + 1]).backward()
            total += layer.weight.grad.pow(2)
        count += 1
    return total / count


def test_obdc_scores_are_weight_squared_times_per_sample_fisher():
    model = _model()
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))) for _ in range(2)]
    imp = tp.importance.OBDCImportance(group_reduction="sum", normalizer=None, num_classes=1000)
    imp.prepare(model)
    for x, y in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        imp.step()
    imp.remove_hooks()
    assert imp.steps == 2
    scores = imp(_group(model))
    # Only the group's convolution/linear output sides count: here conv0's rows.
    fisher = _fisher_by_hand(model, batches, model[0])
    expected = (model[0].weight.detach().pow(2) * (fisher + imp.eps)).sum((1, 2, 3))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-9)


def test_obdc_by_name_with_a_pruner_the_torch_pruning_way():
    model = _model()
    imp = tp.importance.create("obdc")
    assert isinstance(imp, tp.importance.OBDCImportance)
    example = torch.randn(2, 3, 8, 8)
    pruner = tp.pruner.BasePruner(model, example, importance=imp, pruning_ratio=0.5)
    with pytest.raises(tp.ConfigurationError, match="prepare"):
        imp.step()
    imp._prepare_model(model, pruner)
    for _ in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 5, (4,))).backward()
        imp.step()
    expected_kept = torch.argsort(imp(_group(model)), descending=True)[:3].sort().values
    survivors = model[0].weight.detach()[expected_kept].clone()
    pruner.step()
    imp._rm_hooks(model)
    imp._clear_buffer()
    assert model[0].out_channels == 3
    torch.testing.assert_close(model[0].weight.detach(), survivors)  # the three highest-scoring channels stay
    assert model(example).shape == (2, 5)
    with pytest.raises(tp.ConfigurationError, match="no Fisher estimate"):
        imp(_group(model, (0,)))
