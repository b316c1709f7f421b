"""Compensation at step(): bias and least-squares refits of the layers whose inputs are removed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pruning_core as tp
from pruning_core.calibration import CalibrationStatistics, Request, conv_form, dense_form
from pruning_core.compensation import compensated
from pruning_core.graph.record import changes
from pruning_core.testing import architectures


class FixedScores(tp.importance.Importance):
    """Scores that make the pruner remove exactly ``low`` of every group of ``size`` channels."""

    def __init__(self, size: int, low) -> None:
        super().__init__()
        self.size, self.low = size, set(low)

    def __call__(self, group):
        if group.num_channels != self.size:
            return torch.ones(group.num_channels)
        return torch.tensor([0.0 if c in self.low else 1.0 + c for c in range(self.size)])


def _stats(layer, form, batches, gram=True):
    stats = CalibrationStatistics()
    from pruning_core.builtin.handlers.conv import prune_conv_handler
    from pruning_core.builtin.handlers.linear import prune_linear_handler

    h = prune_linear_handler if isinstance(layer, nn.Linear) else prune_conv_handler
    with stats.record(layer, [Request(layer, h, "layer", "in", form, gram)]):
        for x in batches:
            layer(x)
    return stats.get(layer)


def _affine_producer_model():
    """Linear(4 -> 8) whose outputs 6 and 7 are affine combinations of outputs 0..5, then Linear(8 -> 5)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 5)).double()
    with torch.no_grad():
        first = model[0]
        first.weight[6] = 0.5 * first.weight[0] - 1.5 * first.weight[3]
        first.bias[6] = 0.5 * first.bias[0] - 1.5 * first.bias[3] + 0.7  # an offset: needs the intercept
        first.weight[7] = first.weight[1] + first.weight[2] + 2 * first.weight[5]
        first.bias[7] = first.bias[1] + first.bias[2] + 2 * first.bias[5]
    return model


@pytest.mark.parametrize("with_bias", [True, False])
def test_lstsq_recovers_the_dense_output_when_removed_channels_are_combinations_of_kept_ones(with_bias):
    model = _affine_producer_model()
    if not with_bias:
        model[1].bias = None  # the created bias carries the intercept
    dense = copy.deepcopy(model)
    calibration = [torch.randn(64, 4, dtype=torch.float64) for _ in range(3)]
    pruner = tp.pruner.BasePruner(model, calibration[0], importance=FixedScores(8, [6, 7]), pruning_ratio=0.25,
                                  calibration=calibration, compensation="lstsq", damping=0.0,
                                  ignored_layers=[model[1]])
    pruner.step()
    assert model[1].in_features == 6
    test = torch.randn(50, 4, dtype=torch.float64)
    torch.testing.assert_close(model(test), dense(test), rtol=1e-9, atol=1e-9)
    # Without compensation the same pruning loses the two channels' contribution.
    plain = copy.deepcopy(dense)
    tp.pruner.BasePruner(plain, calibration[0], importance=FixedScores(8, [6, 7]), pruning_ratio=0.25,
                         ignored_layers=[plain[1]]).step()
    assert (plain(test) - dense(test)).abs().max() > 1e-2


def test_lstsq_recovers_a_conv_output_exactly_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 3, padding=1)).double()
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[0] - 2 * model[0].weight[2]
        model[0].bias[5] = model[0].bias[0] - 2 * model[0].bias[2]  # exact in the zero padding too
    dense = copy.deepcopy(model)
    calibration = [torch.randn(4, 3, 8, 8, dtype=torch.float64) for _ in range(2)]
    tp.pruner.BasePruner(model, calibration[0], importance=FixedScores(6, [5]), pruning_ratio=1 / 6,
                         calibration=calibration, compensation="lstsq", damping=0.0,
                         ignored_layers=[model[1]]).step()
    assert model[1].in_channels == 5
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method", ["bias", "lstsq"])
def test_compensation_changes_nothing_when_nothing_is_removed(method):
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    form = dense_form(layer)
    stats = _stats(layer, form, [torch.randn(20, 6) for _ in range(2)])
    weight, bias = compensated(form, dense_form(layer), stats, torch.empty(0, dtype=torch.long),
                               torch.arange(6), torch.arange(3), method)
    assert torch.equal(weight.to(layer.weight.dtype), layer.weight.detach())
    assert torch.equal(bias.to(layer.bias.dtype), layer.bias.detach())
    # Through the pruner: a ratio that removes nothing leaves every parameter object in place.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p for p in model.parameters()]
    tp.pruner.BasePruner(model, torch.randn(1, 4), pruning_ratio=0.0, calibration=[torch.randn(8, 4)],
                         compensation=method).step()
    assert all(a is b for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("method", ["bias", "lstsq"])
def test_a_convolution_is_compensated_as_a_linear_layer_on_its_unfolded_patches(groups, method):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups).double()
    batches = [torch.randn(2, 4, 7, 7, dtype=torch.float64) for _ in range(3)]
    removed = torch.tensor([1, 3])  # the same local channel in each of the two groups
    conv_stats = _stats(conv, conv_form(conv), batches)
    conv_w, conv_b = compensated(conv_form(conv), conv_form(conv), conv_stats, removed, torch.arange(4),
                                 torch.arange(6), method)
    per_in, per_out = 4 // groups, 6 // groups
    for g in range(groups):
        # The same group as a linear layer over its unfolded 3x3 patches.
        linear = nn.Linear(per_in * 9, per_out).double()
        with torch.no_grad():
            linear.weight.copy_(conv.weight[g * per_out:(g + 1) * per_out].reshape(per_out, -1))
            linear.bias.copy_(conv.bias[g * per_out:(g + 1) * per_out])
        patches = [torch.nn.functional.unfold(x[:, g * per_in:(g + 1) * per_in], 3, padding=1, stride=2)
                   .transpose(1, 2).reshape(-1, per_in * 9) for x in batches]
        lin_stats = _stats(linear, dense_form(linear), patches)
        local = removed[(removed // per_in) == g] % per_in
        features = (local.unsqueeze(1) * 9 + torch.arange(9)).reshape(-1)
        lin_w, lin_b = compensated(dense_form(linear), dense_form(linear), lin_stats, features,
                                   torch.arange(per_in * 9), torch.arange(per_out), method)
        torch.testing.assert_close(conv_w[g * per_out:(g + 1) * per_out], lin_w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(conv_b[g * per_out:(g + 1) * per_out], lin_b, rtol=1e-10, atol=1e-10)


def test_bias_compensation_keeps_the_mean_output_on_the_calibration_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    calibration = [torch.randn(40, 5, dtype=torch.float64) for _ in range(3)]
    dense = copy.deepcopy(model)
    tp.pruner.BasePruner(model, calibration[0], importance="l2", pruning_ratio=0.5, calibration=calibration,
                         compensation="bias").step()
    data = torch.cat(calibration)
    torch.testing.assert_close(model(data).mean(0), dense(data).mean(0), rtol=1e-9, atol=1e-9)


def _record_dense(model, batches):
    """Inputs and outputs of every Linear and Conv2d on the calibration batches (the dense model)."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: seen.setdefault(name, []).append((a[0], o)))
             for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    return seen


def _error(layer, pairs, channel_dim):
    record = changes(layer) or {"removed": {}}
    gone_in, gone_out = set(record["removed"].get("in", [])), set(record["removed"].get("out", []))
    total = 0.0
    with torch.no_grad():
        for x, y in pairs:
            keep_in = [i for i in range(x.shape[channel_dim]) if i not in gone_in]
            keep_out = [i for i in range(y.shape[channel_dim]) if i not in gone_out]
            x = x.index_select(channel_dim, torch.tensor(keep_in))
            y = y.index_select(channel_dim, torch.tensor(keep_out))
            total += float((layer(x) - y).double().pow(2).sum())
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_lstsq_never_increases_the_calibration_reconstruction_error(rng):
    spec = architectures.random_spec(rng, max_blocks=4)
    model, x = architectures.build(spec, seed=rng.randint(0, 1000))
    batches = [torch.randn(3, 3, 16, 16) for _ in range(3)]
    dense = _record_dense(model, batches)
    pruned = {}
    for method in (None, "lstsq"):
        copy_ = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tp.pruner.BasePruner(copy_, x, importance="l2", pruning_ratio=0.5, calibration=batches,
                                 compensation=method, sequential=False).step()
        pruned[method] = dict(copy_.named_modules())
    for name, pairs in dense.items():
        layer_none, layer_lstsq = pruned[None][name], pruned["lstsq"][name]
        if not (changes(layer_lstsq) or {"removed": {}})["removed"].get("in"):
            continue
        dim = 1 if isinstance(layer_none, nn.Conv2d) else -1
        without, with_ = _error(layer_none, pairs, dim), _error(layer_lstsq, pairs, dim)
        assert with_ <= without * (1 + 1e-4) + 1e-6, (name, with_, without, spec)


def test_a_created_bias_is_saved_and_loaded_with_the_pruned_model(tmp_path):
    torch.manual_seed(0)
    def make():
        return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3, bias=False))

    model = make()
    calibration = [torch.randn(30, 4) for _ in range(2)]
    tp.pruner.BasePruner(model, calibration[0], pruning_ratio=0.5, calibration=calibration,
                         compensation="bias").step()
    assert model[2].bias is not None and model[2].bias.shape == (3,)
    fresh = make()
    tp.load_state_dict(fresh, tp.state_dict(model))
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))
