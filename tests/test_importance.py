"""Each criterion against hand-computed scores: constant, random or reversed scores would fail these."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _model_and_group():
    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 3.0, 0], [0, 0, 2.0], [0.5, 0, 0]]))
        model.fc1.bias.zero_()
        model.bn.weight.copy_(torch.tensor([1.0, 4.0, 2.0, 3.0]))
        model.fc2.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0]]))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(5, 3))
    group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 2, 3])
    return model, group


def _expected_l2(model):
    # Sum of squares of every weight slice a channel owns: fc1 row, bn gamma, fc2 column.
    fc1 = model.fc1.weight.pow(2).sum(1)
    bn = model.bn.weight.pow(2)
    fc2 = model.fc2.weight.pow(2).sum(0)
    return torch.stack([fc1, bn, fc2])


def test_group_magnitude_is_the_mean_of_member_norms():
    model, group = _model_and_group()
    scores = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)(group)
    torch.testing.assert_close(scores, _expected_l2(model).mean(0))
    sums = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)(group)
    torch.testing.assert_close(sums, _expected_l2(model).sum(0))
    l1 = tp.importance.create("l1", normalizer=None)(group)
    expected_l1 = torch.stack([model.fc1.weight.abs().sum(1), model.bn.weight.abs(), model.fc2.weight.abs().sum(0)])
    torch.testing.assert_close(l1, expected_l1.mean(0))


def test_normalizers():
    model, group = _model_and_group()
    raw = _expected_l2(model).mean(0)
    for name, expected in [("mean", raw / raw.mean()), ("max", raw / raw.max()), ("sum", raw / raw.sum()),
                           ("standarization", (raw - raw.min()) / (raw.max() - raw.min()))]:
        got = tp.importance.GroupMagnitudeImportance(p=2, normalizer=name)(group)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_lamp_scores_divide_by_the_remaining_mass():
    scores = torch.tensor([4.0, 1.0, 3.0, 2.0])
    # sorted: 1, 2, 3, 4 -> 1/10, 2/9, 3/7, 4/4
    torch.testing.assert_close(tp.importance.lamp_transform(scores), torch.tensor([1.0, 0.1, 3 / 7, 2 / 9]))
    model, group = _model_and_group()
    lamp = tp.importance.LAMPImportance()(group)
    assert torch.equal(torch.argsort(lamp), torch.argsort(_expected_l2(model).mean(0)))


def test_taylor_uses_weights_times_gradients():
    model, group = _model_and_group()
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 2
    scores = tp.importance.GroupTaylorImportance(normalizer=None)(group)
    expected = torch.stack([(model.fc1.weight * 2).abs().sum(1), (model.bn.weight * 2).abs(),
                            (model.fc2.weight * 2).abs().sum(0)]).mean(0)
    torch.testing.assert_close(scores, expected.detach())
    for p in model.parameters():
        p.grad = None
    with pytest.raises(tp.ConfigurationError, match="loss.backward"):
        tp.importance.GroupTaylorImportance()(group)


def test_hessian_accumulates_per_sample_squared_gradients():
    model, group = _model_and_group()
    imp = tp.importance.GroupHessianImportance(normalizer=None)
    grads = [1.0, 3.0]
    for g in grads:
        for p in model.parameters():
            p.grad = torch.full_like(p, g)
        imp.accumulate_grad(model)
    hessian = sum(g * g for g in grads) / len(grads)
    expected = torch.stack([model.fc1.weight.pow(2).sum(1), model.bn.weight.pow(2),
                            model.fc2.weight.pow(2).sum(0)]).mean(0) * hessian
    torch.testing.assert_close(imp(group), expected.detach())


def test_bn_scale_reads_only_batchnorm_gammas():
    model, group = _model_and_group()
    scores = tp.importance.BNScaleImportance(normalizer=None)(group)
    torch.testing.assert_close(scores, model.bn.weight.detach().abs())


def test_fpgm_ranks_the_median_filter_lowest():
    layer = nn.Linear(2, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(5, 1, bias=False))
    nn.init.zeros_(model[2].weight)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 2))
    group = DG.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=list(range(5)))
    scores = tp.importance.FPGMImportance(normalizer=None)(group)
    assert int(scores.argmin()) == 0 and int(scores.argmax()) == 4


def test_random_is_reproducible_with_a_seed_and_varies_without():
    _, group = _model_and_group()
    a = tp.importance.RandomImportance(seed=1)(group)
    b = tp.importance.RandomImportance(seed=1)(group)
    c = tp.importance.RandomImportance(seed=2)(group)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_activation_statistics_accumulate_over_every_batch():
    model, group = _model_and_group()
    imp = tp.importance.ActivationImportance(normalizer=None)
    with imp.record(model):
        model(torch.tensor([[10.0, 0.0, 0.0]]))   # only channel 0 (and 3) fire
        model(torch.tensor([[0.0, 0.0, 10.0]]))   # only channel 2 fires
    assert imp.batches == 2
    scores = imp(group)
    # Channel 0 fired only in the first batch: keeping just the last batch would score it 0.
    assert scores[0] > 0 and scores[1] == 0
    # fc1 alone: |outputs| averaged over both batches.
    fc1_only = tp.importance.ActivationImportance(normalizer=None)
    fc1_only._sums = {id(model.fc1): imp._sums[id(model.fc1)]}
    fc1_only._counts = {id(model.fc1): imp._counts[id(model.fc1)]}
    torch.testing.assert_close(fc1_only(group), torch.tensor([10.0, 0.0, 20.0, 5.0]) / 2)


def test_custom_layer_without_channel_params_is_scored_like_a_builtin():
    class Handler:
        """Only the four contract methods, delegating to plain tensor edits."""

        def prune_out_channels(self, layer, idxs):
            keep = [i for i in range(layer.w.shape[0]) if i not in idxs]
            layer.w = nn.Parameter(layer.w.data[keep])
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = [i for i in range(layer.w.shape[1]) if i not in idxs]
            layer.w = nn.Parameter(layer.w.data[:, keep])
            return layer

        def get_out_channels(self, layer):
            return layer.w.shape[0]

        def get_in_channels(self, layer):
            return layer.w.shape[1]

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))

        def forward(self, x):
            return torch.tanh(x) @ self.w.t()

    model = nn.Sequential(nn.Linear(2, 4), Custom(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.zero_()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(5, 2), customized_pruners={Custom: Handler()})
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 1, 2, 3])
    scores = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)(group)
    # Channel 3 is the only one the custom layer weights heavily: 2 (fc row) + 81 + 1 from its column.
    torch.testing.assert_close(scores, torch.tensor([2.0 + 1, 2.0 + 1, 2.0 + 1, 2.0 + 82]))


def test_criteria_are_registered_by_name_with_suggestions():
    assert {"l1", "l2", "taylor", "hessian", "random", "bn_scale", "lamp", "fpgm", "activation"} <= set(
        tp.importance.names())
    with pytest.raises(tp.UnknownNameError, match="Did you mean 'taylor'"):
        tp.importance.create("talyor")
