"""All-or-nothing pruning: a failure anywhere in a group or a step leaves the model bit-identical."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pruning_core as tp
from pruning_core import _plugins
from pruning_core.builtin.handlers.batchnorm import prune_batchnorm_handler
from pruning_core.builtin.handlers.conv import prune_conv_handler
from pruning_core.testing.oracle import assert_same, fingerprint


class Flaky:
    """Delegates to a built-in handler but raises on its k-th call (counted across all flaky handlers)."""

    calls = 0
    fail_at = -1

    def __init__(self, inner, in_place_edit=False):
        self.inner = inner
        self.in_place_edit = in_place_edit

    def _tick(self, layer):
        Flaky.calls += 1
        if self.in_place_edit:
            with torch.no_grad():
                layer.weight.mul_(2)  # a careless third-party handler edits weights in place first
        if Flaky.calls == Flaky.fail_at:
            raise RuntimeError("injected failure")

    def prune_out_channels(self, layer, idxs):
        self._tick(layer)
        return self.inner.prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer, idxs):
        self._tick(layer)
        return self.inner.prune_in_channels(layer, idxs)

    def get_out_channels(self, layer):
        return self.inner.get_out_channels(layer)

    def get_in_channels(self, layer):
        return self.inner.get_in_channels(layer)

    def channel_dim(self, layer, tensor, side):
        return 1

    def channel_params(self, layer, side):  # so scoring does not probe (and count) calls
        return self.inner.channel_params(layer, side)


def _flaky_graph(model, x, in_place_edit=False):
    conv = Flaky(prune_conv_handler, in_place_edit)
    bn = Flaky(prune_batchnorm_handler, in_place_edit)
    bn.prune_in_channels = bn.prune_out_channels  # stays coupled, like BatchNorm
    return tp.DependencyGraph().build_dependency(model, x, customized_pruners={nn.Conv2d: conv, nn.BatchNorm2d: bn})


@pytest.mark.parametrize("in_place_edit", [False, True])
def test_group_prune_fails_at_every_member_and_restores_everything(in_place_edit):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    reference = model(x)
    DG = _flaky_graph(model, x, in_place_edit)
    members = len(DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9]))
    assert members == 10
    for k in range(1, members + 1):
        before = fingerprint(model)
        Flaky.calls, Flaky.fail_at = 0, k
        group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
        with pytest.raises(tp.PruneFailedError, match=r"Flaky failed on \S+ \((Conv2d|BatchNorm2d)\).*injected"):
            group.prune()
        assert_same(before, fingerprint(model))
        assert torch.equal(model(x), reference)
    # The graph is still consistent: the same group prunes fine afterwards.
    Flaky.fail_at = -1
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9]).prune()
    assert model.conv1.out_channels == 61 and model(x).shape == (1, 1000)


def test_a_failing_fixup_hook_restores_the_group(monkeypatch):
    import types

    plugin = types.ModuleType("broken_fixup")

    def fixup_after_prune(model, modules):
        raise RuntimeError("fix-up exploded")

    plugin.fixup_after_prune = tp.hookimpl(fixup_after_prune)
    hub = _plugins.get_hub()
    hub.register(plugin, "broken_fixup")
    try:
        model = torchvision.models.resnet18().eval()
        x = torch.randn(1, 3, 64, 64)
        DG = tp.DependencyGraph().build_dependency(model, x)
        before = fingerprint(model)
        with pytest.raises(tp.PruneFailedError, match="fix-up hook failed.*fix-up exploded"):
            DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[1]).prune()
        assert_same(before, fingerprint(model))
    finally:
        hub.unregister("broken_fixup")


def test_pruner_step_is_all_or_nothing():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    conv = Flaky(prune_conv_handler)
    pruner = tp.pruner.BasePruner(model, x, pruning_ratio=0.5, customized_pruners={nn.Conv2d: conv})
    before = fingerprint(model)
    Flaky.calls, Flaky.fail_at = 0, 25  # somewhere in the middle of the step, after several groups
    with pytest.raises(tp.PruneFailedError):
        pruner.step()
    assert_same(before, fingerprint(model))
    assert pruner.current_step == 0 and pruner.pruning_history() == []
    Flaky.fail_at = -1
    pruner.step()
    assert model.conv1.out_channels == 32


def test_a_step_that_breaks_the_model_is_undone_and_the_culprit_kept():
    class HiddenWidth(nn.Module):
        """Reshapes with a width written in code, so pruning ``mid`` breaks it."""

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.mid = nn.Linear(8, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            h = self.mid(torch.relu(self.a(x)))
            return self.out(h.reshape(x.shape[0], 6))

    model = HiddenWidth()
    x = torch.randn(3, 4)
    with pytest.warns(tp.pruner.PruningWarning, match="could not be pruned"):
        tp.pruner.BasePruner(model, x, pruning_ratio=0.5).step()
    assert model.a.out_features == 4      # the innocent group was still pruned
    assert model.mid.out_features == 6    # the breaking one was kept
    assert model(x).shape == (3, 2)


# -- compensation (pruning_core/compensation) is part of the same transaction ----------------------------------

class FlakyWithForm(Flaky):
    """A flaky convolution handler that also describes its layer's linear form, so compensation runs."""

    def linear_form(self, layer):
        return self.inner.linear_form(layer)


def _small_cnn():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
              nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
              nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False)]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("method", ["bias", "lstsq"])
def test_a_compensated_step_fails_at_every_handler_call_and_restores_everything(method):
    x = torch.randn(2, 3, 8, 8)
    calibration = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    Flaky.calls, Flaky.fail_at = 0, -1
    tp.pruner.BasePruner(_small_cnn(), x, importance="flap", pruning_ratio=0.5, calibration=calibration,
                         compensation=method, customized_pruners={nn.Conv2d: FlakyWithForm(prune_conv_handler)}).step()
    total = Flaky.calls
    assert total == 5  # every conv side of the three groups
    for k in range(1, total + 1):
        model = _small_cnn()
        reference = model(x)
        conv = FlakyWithForm(prune_conv_handler)
        pruner = tp.pruner.BasePruner(model, x, importance="flap", pruning_ratio=0.5, calibration=calibration,
                                      compensation=method, customized_pruners={nn.Conv2d: conv})
        before = fingerprint(model)
        Flaky.calls, Flaky.fail_at = 0, k
        with pytest.raises(tp.PruneFailedError, match="injected"):
            pruner.step()
        assert_same(before, fingerprint(model))  # created biases and refit weights are gone too
        assert torch.equal(model(x), reference)
        assert pruner.current_step == 0
    Flaky.fail_at = -1
    pruner.step()
    assert model[3].in_channels == 4 and model[3].bias is not None  # compensation="bias"/"lstsq" made one


def test_a_failure_inside_compensation_restores_the_step(monkeypatch):
    import pruning_core.compensation as compensation

    real = compensation.compensated
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the first layer was already refit
            raise RuntimeError("solver exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(compensation, "compensated", failing)
    model = _small_cnn()
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    pruner = tp.pruner.BasePruner(model, x, importance="obs", pruning_ratio=0.5, compensation="lstsq",
                                  calibration=[torch.randn(2, 3, 8, 8)])
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="solver exploded"):
        pruner.step()
    assert len(calls) == 2
    assert_same(before, fingerprint(model))
    assert torch.equal(model(x), reference) and pruner.pruning_history() == []
