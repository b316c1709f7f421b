"""The pruner semantics users asked the incumbent about, defined and tested."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core import _plugins
from pruning_core.testing.oracle import run


class TwoBranch(nn.Module):
    """Two independent hidden layers; branch b's weights are 100x smaller."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(4, 16), nn.Linear(16, 2)
        self.b1, self.b2 = nn.Linear(4, 16), nn.Linear(16, 2)
        with torch.no_grad():
            self.b1.weight.mul_(0.01)
            self.b2.weight.mul_(0.01)

    def forward(self, x):
        return self.a2(torch.relu(self.a1(x))) + self.b2(torch.relu(self.b1(x)))


X = torch.randn(3, 4)


def test_local_pruning_takes_the_ratio_from_every_group():
    model = TwoBranch()
    tp.pruner.BasePruner(model, X, importance="l2", pruning_ratio=0.5).step()
    assert model.a1.out_features == 8 and model.b1.out_features == 8


def test_global_pruning_ranks_across_groups():
    model = TwoBranch()
    tp.pruner.BasePruner(model, X, importance=tp.importance.GroupMagnitudeImportance(normalizer=None),
                         pruning_ratio=0.5, global_pruning=True).step()
    assert model.a1.out_features + model.b1.out_features == 16
    assert model.b1.out_features == 1 and model.a1.out_features == 15  # b keeps one channel, never zero


def test_max_pruning_ratio_caps_each_group_in_global_pruning():
    model = TwoBranch()
    tp.pruner.BasePruner(model, X, importance=tp.importance.GroupMagnitudeImportance(normalizer=None),
                         pruning_ratio=0.5, global_pruning=True, max_pruning_ratio=0.75).step()
    assert model.b1.out_features == 4 and model.a1.out_features == 12


def test_ignored_layer_keeps_its_outputs_and_its_inputs_follow_producers():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    tp.pruner.BasePruner(model, X, pruning_ratio=0.5, ignored_layers=[model[2]]).step()
    assert model[2].out_features == 8  # protected
    assert model[2].in_features == 4   # follows model[0], which was pruned
    assert run(model, X).shape == (3, 2)


def test_ignored_layers_must_belong_to_the_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(tp.ConfigurationError, match="not part of the model"):
        tp.pruner.BasePruner(model, X, pruning_ratio=0.5, ignored_layers=[nn.Linear(2, 2)])


def test_ratio_that_would_empty_a_layer_keeps_one_channel_and_says_so():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.warns(tp.pruner.PruningWarning, match="kept one channel"):
        tp.pruner.BasePruner(model, X, pruning_ratio=0.9).step()
    assert model[0].out_features == 1


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_iterative_steps_reach_exactly_the_target(steps):
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    pruner = tp.pruner.BasePruner(model, X, pruning_ratio=0.5, iterative_steps=steps)
    widths = []
    for _ in range(steps):
        pruner.step()
        widths.append(model[0].out_features)
    assert widths[-1] == 32
    assert widths == sorted(widths, reverse=True)
    with pytest.warns(tp.pruner.PruningWarning, match="steps are done"):
        pruner.step()
    assert model[0].out_features == 32


def test_tuple_keys_share_one_ratio_and_one_ranking():
    model = TwoBranch()
    pruner = tp.pruner.BasePruner(model, X, importance=tp.importance.GroupMagnitudeImportance(normalizer=None),
                                  pruning_ratio=0.0, pruning_ratio_dict={(model.a1, model.b1): 0.5})
    pruner.step()
    assert model.a1.out_features + model.b1.out_features == 16
    assert model.b1.out_features < model.a1.out_features
    single = TwoBranch()
    tp.pruner.BasePruner(single, X, importance="l2", pruning_ratio=0.0,
                         pruning_ratio_dict={single.a1: 0.5, single.b1: 0.25}).step()
    assert (single.a1.out_features, single.b1.out_features) == (8, 12)


def test_round_to_keeps_multiples():
    model = nn.Sequential(nn.Linear(4, 30), nn.ReLU(), nn.Linear(30, 2))
    tp.pruner.BasePruner(model, X, pruning_ratio=0.5, round_to=8).step()
    assert model[0].out_features == 16


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.out(h + a)


def test_head_pruning_removes_whole_heads():
    model = AttentionNet().eval()
    x = torch.randn(2, 5, 4)
    pruner = tp.pruner.BasePruner(model, x, num_heads={model.attn: 4}, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=0.5, pruning_ratio=0.0)
    pruner.step()
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.embed_dim) == (2, 4, 8)
    assert run(model, x).shape == (2, 5, 2)


def test_head_dims_are_pruned_uniformly_by_default():
    model = AttentionNet().eval()
    x = torch.randn(2, 5, 4)
    tp.pruner.BasePruner(model, x, pruning_ratio=0.5).step()
    assert (model.attn.num_heads, model.attn.head_dim) == (4, 2)
    assert run(model, x).shape == (2, 5, 2)


def test_history_replays_onto_a_fresh_unpruned_copy():
    model = AttentionNet().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 5, 4)
    pruner = tp.pruner.BasePruner(model, x, num_heads={model.attn: 4}, prune_num_heads=True, head_pruning_ratio=0.5,
                                  pruning_ratio=0.5, iterative_steps=2)
    pruner.step()
    pruner.step()
    history = pruner.pruning_history()
    assert history and all(set(entry) == {"module", "attr", "kind", "dim", "idxs"} for entry in history)
    tp.pruner.BasePruner(fresh, x, pruning_ratio=0.5).load_pruning_history(history)
    assert {n: p.shape for n, p in fresh.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    torch.testing.assert_close(run(fresh, x), run(model, x))


@pytest.mark.parametrize("kwargs,match", [
    ({"pruning_ratio": 1.5}, "pruning_ratio must be in"),
    ({"pruning_ratio": -0.1}, "pruning_ratio must be in"),
    ({"pruning_ratio": 1.0}, "pruning_ratio must be in"),
    ({"pruning_ratio": "half"}, "must be a number"),
    ({"iterative_steps": 0}, "iterative_steps"),
    ({"round_to": 0}, "round_to"),
    ({"pruning_rate": 0.5}, "did you mean pruning_ratio"),
    ({"importance": "l3"}, "Did you mean"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    model = TwoBranch()
    with pytest.raises(tp.PruningError, match=match):
        tp.pruner.BasePruner(model, X, **kwargs)


def test_legacy_keyword_spellings_still_work():
    model = TwoBranch()
    tp.pruner.BasePruner(model, X, ch_sparsity=0.25).step()
    assert model.a1.out_features == 12


def test_pruners_are_registered_by_name():
    assert {"base", "magnitude", "random", "bn_scale", "group_norm", "growing_reg"} <= set(tp.pruner.names())
    model = TwoBranch()
    pruner = tp.pruner.create("random", model, X, pruning_ratio=0.5)
    assert isinstance(pruner, tp.pruner.RandomPruner)
    pruner.step()
    assert model.a1.out_features == 8


def test_a_plugin_criterion_is_selected_by_name(monkeypatch):
    class FirstChannelsFirst(tp.importance.Importance):
        """Scores channels by index: channel 0 is least important."""

        def __call__(self, group):
            return torch.arange(group.num_channels, dtype=torch.float32)

    import types

    plugin = types.ModuleType("index_importance")
    plugin.register_importance_criteria = tp.hookimpl(
        lambda: [tp.ImportanceSpec("by_index", FirstChannelsFirst, "keeps the last channels")])

    class EntryPoint:
        name, value = "index_importance", "index_importance"
        dist = types.SimpleNamespace(metadata={"Name": "index-importance"}, version="0.1")

        def load(self):
            return plugin

    real = _plugins.metadata.entry_points
    monkeypatch.setattr(_plugins.metadata, "entry_points",
                        lambda **kw: [EntryPoint()] if kw.get("group") == "pruning_core" else real(**kw))
    _plugins.reset_hub()
    try:
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        kept_rows = model[0].weight.detach()[3:].clone()
        tp.pruner.BasePruner(model, X, importance="by_index", pruning_ratio=0.5).step()
        torch.testing.assert_close(model[0].weight.detach(), kept_rows)
    finally:
        _plugins.reset_hub()


def test_bn_scale_regularizer_adds_the_l1_subgradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 5, 5)
    pruner = tp.pruner.BNScalePruner(model, x, reg=0.1, pruning_ratio=0.5)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -2.0, 3.0, -4.0]))
    model[1].weight.grad = torch.zeros(4)
    pruner.regularize(model)
    torch.testing.assert_close(model[1].weight.grad, torch.tensor([0.1, -0.1, 0.1, -0.1]))


def test_group_norm_regularizer_is_a_group_lasso_gradient():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    x = torch.randn(4, 2)
    pruner = tp.pruner.GroupNormPruner(model, x, reg=1.0, alpha=1.0, pruning_ratio=0.5)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[4.0, 0.0, 1.0]]))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    norms = torch.tensor([5.0, 1.0, 3 ** 0.5])  # sqrt of every weight of each channel, squared and summed
    torch.testing.assert_close(model[0].weight.grad, model[0].weight.detach() / norms[:, None])
    torch.testing.assert_close(model[2].weight.grad, model[2].weight.detach() / norms[None, :])


def test_growing_regularizer_grows_on_the_least_important_channels():
    model = nn.Sequential(nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.1, 0.1], [2.0, 2.0], [0.2, 0.2]]))
        model[2].weight.fill_(1.0)
    pruner = tp.pruner.GrowingRegPruner(model, torch.randn(3, 2), reg=0.0, delta_reg=0.5, pruning_ratio=0.5)
    pruner.update_regularizer()
    pruner.update_regularizer()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    expected = torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None] * model[0].weight.detach()
    torch.testing.assert_close(model[0].weight.grad, expected)


def test_warnings_do_not_fire_for_normal_pruning():
    model = TwoBranch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.pruner.BasePruner(model, X, pruning_ratio=0.5).step()
