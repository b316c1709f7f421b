"""pruning_core.testing, the helpers plugin authors use: check_handler passes correct handlers and
names what is wrong with broken ones, and the package costs no test dependency until asked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.builtin.handlers.linear import LinearPruner
from pruning_core.testing import HandlerContractError, check_handler

LINEAR = LinearPruner()


def _linear():
    torch.manual_seed(0)
    return nn.Linear(5, 6), torch.randn(3, 5)


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(5, 6), torch.randn(3, 5)),
    (nn.Conv2d(4, 6, 3), torch.randn(1, 4, 7, 9)),
    (nn.Conv1d(4, 6, 3), torch.randn(1, 4, 9)),
])
@pytest.mark.parametrize("idxs", [None, [1, 3]])
def test_linear_maps_pass_the_exact_checks(layer, x, idxs):
    handler = tp.DependencyGraph().build_dependency(layer, x).get_pruner_of_module(layer)
    ran = check_handler(handler, layer, x, idxs=idxs, exact_out=True, exact_in=True)
    assert ran == ["prune_out_channels", "prune_in_channels", "channel_params(out)", "channel_params(in)"]


def test_a_bidirectional_rnn_output_holds_each_channel_twice():
    lstm, x = nn.LSTM(4, 6, bidirectional=True), torch.randn(3, 2, 4)
    handler = tp.DependencyGraph().build_dependency(lstm, x).get_pruner_of_module(lstm)
    assert "prune_in_channels" in check_handler(handler, lstm, x, idxs=[0, 3], exact_in=True)


def test_the_checked_layer_is_left_unchanged():
    layer, x = _linear()
    weight = layer.weight.detach().clone()
    check_handler(LINEAR, layer, x, idxs=[0, 2])
    assert layer.out_features == 6 and torch.equal(layer.weight, weight)


class WrongRows(LinearPruner):
    def _prune_out(self, layer, idxs):
        super()._prune_out(layer, (idxs + 1) % layer.out_features)  # removes the neighbour


class WrongColumns(LinearPruner):
    def _prune_in(self, layer, idxs):
        super()._prune_in(layer, (idxs + 1) % layer.in_features)


class StaleSize(LinearPruner):
    def _prune_out(self, layer, idxs):
        out_features = layer.out_features
        super()._prune_out(layer, idxs)
        layer.out_features = out_features  # forgets to update the attribute the size is read from


class BiasLeftBehind(LinearPruner):
    def _prune_out(self, layer, idxs):
        bias = layer.bias
        super()._prune_out(layer, idxs)
        layer.bias = bias


class ReturnsNothing(LinearPruner):
    def prune_out_channels(self, layer, idxs):
        super().prune_out_channels(layer, idxs)


class CopiedParams(LinearPruner):
    def channel_params(self, layer, side):
        return [(layer.weight.detach().clone(), 0 if side == "out" else 1, None)]


@pytest.mark.parametrize("handler,message", [
    (WrongRows(), "changed the output channels that were kept"),
    (WrongColumns(), "does not match zeroing them"),
    (StaleSize(), "get_out_channels did not drop by 1"),
    (BiasLeftBehind(), "forward fails after prune_out_channels: RuntimeError"),
    (ReturnsNothing(), "must return the layer it pruned"),
    (CopiedParams(), "not a parameter or buffer of the layer"),
])
def test_broken_handlers_are_named_with_what_is_wrong(handler, message):
    layer, x = _linear()
    with pytest.raises(HandlerContractError, match=f"^{type(handler).__name__}: .*{message}"):
        check_handler(handler, layer, x, exact_out=True, exact_in=True)


def test_the_exact_checks_are_opt_in():
    layer, x = _linear()
    assert "prune_out_channels" in check_handler(WrongRows(), layer, x)  # shapes alone cannot tell


@pytest.mark.parametrize("idxs", [[], [0, 0], [-1], [5], list(range(5))])
def test_impossible_idxs_are_a_configuration_error(idxs):
    layer, x = _linear()
    with pytest.raises(tp.ConfigurationError, match="check_handler"):
        check_handler(LINEAR, layer, x, idxs=idxs)


def test_the_testing_package_imports_hypothesis_only_for_its_strategies():
    code = ("import sys\n"
            "import pruning_core.testing, pruning_core.testing.architectures, pruning_core.testing.oracle\n"
            "print('hypothesis' in sys.modules)\n"
            "import pruning_core.testing.strategies\n"
            "print('hypothesis' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True"]
