"""Torch-Pruning's graph-level API, as code written for it calls it (issue 15, section 1)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pruning_core as tp


class Scaler(nn.Module):
    """A custom layer: a per-channel scale, (N, C) -> (N, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ScalerPruner(tp.pruner.BasePruningFunc):
    """Written the Torch-Pruning way: subclass BasePruningFunc, use _prune_parameter_and_grad."""

    calls = 0

    def prune_out_channels(self, layer, idxs):
        ScalerPruner.calls += 1
        keep = [i for i in range(layer.scale.shape[0]) if i not in set(idxs)]
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.shape[0]

    def get_in_channels(self, layer):
        return layer.scale.shape[0]


def _net(hidden: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(4, hidden), Scaler(hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_register_customized_layer_is_used_for_that_layer_class():
    model = _net()
    DG = tp.DependencyGraph()
    DG.register_customized_layer(Scaler, ScalerPruner())
    DG.build_dependency(model, torch.randn(2, 4))
    before = ScalerPruner.calls
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1, 4])
    assert any(isinstance(item.dep.target.module, Scaler) for item in group)
    group.prune()
    assert ScalerPruner.calls == before + 1
    assert model[1].scale.shape == (4,) and model[3].in_features == 4
    model(torch.randn(2, 4))


def test_register_customized_layer_after_building_is_refused():
    DG = tp.DependencyGraph().build_dependency(_net(), torch.randn(2, 4))
    with pytest.raises(tp.ConfigurationError, match="before build_dependency"):
        DG.register_customized_layer(Scaler, ScalerPruner())


def test_prune_parameter_and_grad_slices_the_gradient_too():
    weight = nn.Parameter(torch.arange(12.0).reshape(3, 4))
    weight.grad = torch.arange(12.0).reshape(3, 4) * 10
    pruned = ScalerPruner()._prune_parameter_and_grad(weight, [0, 2], 0)
    assert isinstance(pruned, nn.Parameter) and pruned is not weight
    assert torch.equal(pruned.data, weight.data[[0, 2]])
    assert torch.equal(pruned.grad, weight.grad[[0, 2]])
    assert weight.shape == (3, 4)  # the original is left alone


class WrongSizePruner(ScalerPruner):
    """Reports a wrong channel count, or raises: tracing must use the traced tensor instead."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def get_out_channels(self, layer):
        if self.mode == "raise":
            raise RuntimeError("not implemented for this layer")
        return layer.scale.shape[0] + 5

    get_in_channels = get_out_channels


@pytest.mark.parametrize("mode", ["wrong", "raise"])
def test_a_handler_with_wrong_channel_counts_does_not_break_tracing(mode):
    model = _net()
    with pytest.warns(tp.pruner.PruningWarning, match="tracing uses 6"):
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4),
                                                   customized_pruners={Scaler: WrongSizePruner(mode)})
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0])
    assert {type(item.dep.target.module) for item in group} >= {nn.Linear, Scaler}


def test_an_explicit_request_on_an_output_layer_gets_its_group():
    torch.manual_seed(0)
    model = _net()
    reference = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    # Pruners and get_all_groups keep the classifier's classes...
    assert all(g.root_slot.target.owner is not model[3] for g in DG.get_all_groups(root_module_types=None))
    # ...but asking for them by name builds the group, and pruning it removes those outputs.
    group = DG.get_pruning_group(model[3], tp.prune_linear_out_channels, idxs=[1])
    assert DG.check_pruning_group(group)
    group.prune()
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x)[:, [0, 2]])


def test_graph_pruning_history_replays_on_a_fresh_model():
    torch.manual_seed(0)
    model = _net()
    fresh = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 3]).prune()
    history = DG.pruning_history()
    assert history and history[0]["idxs"] == [0, 3]
    DG2 = tp.DependencyGraph().build_dependency(fresh, torch.randn(2, 4))
    DG2.load_pruning_history(history)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


class OneHeadAttention(nn.Module):
    """Fused qkv with a single head, as timm's MaxViT-rmlp stage 0."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 1, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def test_a_one_head_declaration_is_accepted():
    model = OneHeadAttention()
    x = torch.randn(2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.pruner.PruningWarning)
        pruner = tp.pruner.MagnitudePruner(model, x, num_heads={model.qkv: 1}, pruning_ratio=0.5,
                                           ignored_layers=[model.proj])
    pruner.step()
    assert model.qkv.out_features == 12 and model.proj.in_features == 4  # the one head lost half its dims
    assert model(x).shape == (2, 5, 8)
