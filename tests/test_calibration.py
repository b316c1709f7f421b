"""Calibration statistics, the calibrated criteria and the pruner's calibration options."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.builtin.handlers.conv import prune_conv_handler
from pruning_core.builtin.handlers.linear import prune_linear_handler
from pruning_core.calibration import CalibrationStatistics, Request, conv_form, dense_form
from pruning_core.layer_handler import keep_indices, prune_tensor


def _collect(layer, handler, form, batches):
    stats = CalibrationStatistics()
    with stats.record(layer, [Request(layer, handler, "layer", "in", form, gram=True)]):
        for x in batches:
            layer(x)
    return stats.get(layer)


@pytest.mark.parametrize("kind", ["linear", "conv", "grouped", "pointwise", "conv1d"])
def test_statistics_of_four_batches_equal_those_of_the_same_data_in_one_batch(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, handler, data = nn.Linear(6, 4), prune_linear_handler, torch.randn(4, 5, 3, 6)
    elif kind == "conv1d":
        layer, handler, data = nn.Conv1d(4, 3, 3, padding=2, dilation=2), prune_conv_handler, torch.randn(4, 2, 4, 9)
    else:
        conv = {"conv": nn.Conv2d(4, 6, 3, padding=1, stride=2), "grouped": nn.Conv2d(4, 6, 3, groups=2),
                "pointwise": nn.Conv2d(4, 6, 1)}[kind]
        layer, handler, data = conv, prune_conv_handler, torch.randn(4, 2, 4, 7, 7)
    form = conv_form(layer) if handler is prune_conv_handler else dense_form(layer)
    split = _collect(layer, handler, form, list(data))
    whole = _collect(layer, handler, form, [data.reshape(-1, *data.shape[2:])])
    assert split.rows == whole.rows and split.feature_rows == whole.feature_rows
    for name in ("sum", "sum_sq", "feature_sum", "gram"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    assert split.problem is None  # the form reproduces the layer's own output
    # The moments are those of the data itself.
    channel_dim = -1 if kind == "linear" else 2
    flat = data.double().movedim(channel_dim, -1).reshape(-1, data.shape[channel_dim])
    torch.testing.assert_close(split.mean, flat.mean(0))
    torch.testing.assert_close(split.variance, flat.var(0, unbiased=False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_statistics_accumulate_in_float64_for_a_low_precision_model(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(8, 4).to(dtype)
    batches = [(torch.randn(16, 8) * 50 + 300).to(dtype) for _ in range(4)]
    stats = _collect(layer, prune_linear_handler, dense_form(layer), batches)
    assert stats.sum.dtype == stats.gram.dtype == torch.float64
    exact = torch.cat(batches).double()
    torch.testing.assert_close(stats.sum_sq, exact.pow(2).sum(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.gram[0], exact.t() @ exact, rtol=1e-12, atol=0)
    # Summing in the model's own dtype would have lost most of these digits.
    assert not torch.allclose(exact.pow(2).to(dtype).sum(0).double(), stats.sum_sq, rtol=1e-4)


class Mix(nn.Module):
    """A plugin layer: ``x @ weight.T`` under another name."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)

    def forward(self, x):
        return x @ self.weight.t()


class MixHandler:
    """Only the four contract methods."""

    def prune_out_channels(self, layer, idxs):
        prune_tensor(layer, "weight", 0, keep_indices(torch.tensor(idxs), layer.weight.shape[0]))
        return layer

    def prune_in_channels(self, layer, idxs):
        prune_tensor(layer, "weight", 1, keep_indices(torch.tensor(idxs), layer.weight.shape[1]))
        return layer

    def get_out_channels(self, layer):
        return layer.weight.shape[0]

    def get_in_channels(self, layer):
        return layer.weight.shape[1]


def _mix_model():
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), Mix(12, 3))


@pytest.mark.parametrize("importance", ["wanda", "flap"])
def test_a_plugin_layer_with_only_the_contract_methods_gets_channel_statistics(importance):
    model = _mix_model()
    calibration = [torch.randn(20, 5) for _ in range(2)]
    pruner = tp.pruner.BasePruner(model, calibration[0], importance=importance, calibration=calibration,
                                  pruning_ratio=0.5, customized_pruners={Mix: MixHandler()})
    pruner.step()
    assert model[2].weight.shape == (3, 6)


def test_a_plugin_layer_without_linear_form_gets_an_error_naming_it_for_obs_and_a_warning_for_compensation():
    calibration = [torch.randn(20, 5) for _ in range(2)]
    model = _mix_model()
    pruner = tp.pruner.BasePruner(model, calibration[0], importance="obs", calibration=calibration,
                                  pruning_ratio=0.5, customized_pruners={Mix: MixHandler()})
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(tp.ConfigurationError, match=r"importance 'obs' needs the input Gram of 2 \(Mix\).*"
                                                    r"MixHandler has no linear_form\(layer\)"):
        pruner.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model = _mix_model()
    pruner = tp.pruner.BasePruner(model, calibration[0], importance="wanda", calibration=calibration,
                                  pruning_ratio=0.5, customized_pruners={Mix: MixHandler()}, compensation="lstsq")
    with pytest.warns(tp.pruner.PruningWarning, match=r"leaves 1 layer\(s\) uncompensated: 2 \(Mix\): MixHandler "
                                                      r"has no linear_form\(layer\)"):
        pruner.step()
    assert model[2].weight.shape == (3, 6)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 10), nn.Linear(3, 10), nn.Linear(10, 2)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


class KeywordInputs(TwoInputs):
    def forward(self, input_ids=None, extra=None):
        return super().forward(input_ids, extra)


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_calibration_batches_take_the_form_of_the_example_inputs(form):
    torch.manual_seed(0)
    if form == "tensor":
        model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
        make = lambda n: torch.randn(n, 4)  # noqa: E731
    elif form == "tuple":
        model = TwoInputs()
        make = lambda n: (torch.randn(n, 4), torch.randn(n, 3))  # noqa: E731
    else:
        model = KeywordInputs()
        make = lambda n: {"input_ids": torch.randn(n, 4), "extra": torch.randn(n, 3)}  # noqa: E731
    calibration = [make(16) for _ in range(3)]
    run = (lambda m, b: m(**b)) if form == "dict" else (lambda m, b: m(*b)) if form == "tuple" else \
        (lambda m, b: m(b))
    dense = copy.deepcopy(model)
    errors = {}
    for method in (None, "lstsq"):
        pruned = copy.deepcopy(dense)
        tp.pruner.BasePruner(pruned, make(1), importance="flap", calibration=calibration, compensation=method,
                             pruning_ratio=0.5).step()
        with torch.no_grad():
            errors[method] = sum(float((run(pruned, b) - run(dense, b)).pow(2).sum()) for b in calibration)
    assert errors["lstsq"] < errors[None]


def test_a_dataloader_style_inputs_and_labels_batch_uses_the_inputs():
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    tp.pruner.BasePruner(model, torch.randn(1, 4), importance="wanda", calibration=loader,
                         pruning_ratio=0.5).step()
    assert model[0].out_features == 5


class CountingBatches:
    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_every_iterative_step_recalibrates_on_the_pruned_model():
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    batches = CountingBatches([torch.randn(8, 4) for _ in range(2)])
    widths = []
    model[2].register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[-1]))
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 4), importance="obs", calibration=batches,
                                  compensation="lstsq", pruning_ratio=0.5, iterative_steps=2)
    widths.clear()
    pruner.step()
    assert batches.passes == 1 and set(widths[:2]) == {16}
    widths.clear()
    pruner.step()
    assert batches.passes == 2 and set(widths[:2]) == {12}  # statistics of the model after step 1
    assert model[2].in_features == 8


def test_a_generator_is_read_once_and_used_for_every_step():
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    batches = (torch.randn(8, 4) for _ in range(2))
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 4), importance="wanda", calibration=batches,
                                  pruning_ratio=0.5, iterative_steps=2)
    pruner.step()
    pruner.step()
    assert model[0].out_features == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"compensation": "ridge"}, "compensation must be None, 'bias' or 'lstsq'"),
    ({"sequential": "yes"}, "sequential must be True, False or None"),
    ({"damping": -0.1}, "damping must be a number >= 0"),
    ({"calibration": torch.randn(4, 4)}, "calibration must be an iterable of batches"),
    ({"importance": "wanda"}, "importance 'wanda' needs calibration data: pass calibration="),
    ({"compensation": "bias"}, "compensation='bias' needs calibration data"),
    ({"sequential": True, "importance": "wanda", "calibration": [torch.randn(2, 4)]},
     "sequential=True needs a stack of repeated blocks"),
])
def test_bad_calibration_arguments_are_configuration_errors_naming_the_argument(kwargs, match):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(tp.ConfigurationError, match=match):
        tp.pruner.BasePruner(model, torch.randn(1, 4), **kwargs)


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.left, self.right = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        h = self.body(x)
        return self.left(h) + self.right(h)


@pytest.mark.parametrize("name", ["wanda", "flap", "obs"])
def test_criteria_are_selectable_by_name_and_score_a_channel_from_every_consumer(name):
    assert name in tp.importance.names()
    torch.manual_seed(0)
    net = TwoConsumers()
    x = torch.randn(64, 4)

    def lowest(model):
        imp = tp.importance.create(name)
        with imp.record(model):
            model(x)
        pruner = tp.pruner.BasePruner(model, x[:1], importance=imp)
        return int(torch.argmin(pruner.estimate_importance(pruner.groups[0])))

    with torch.no_grad():
        net.left.weight[:, 2] = 0  # channel 2 now matters only through the right consumer
        net.right.weight[:, 2] *= 10
    assert lowest(net) != 2
    with torch.no_grad():
        net.right.weight[:, 2] = 0  # and now through nothing
    assert lowest(net) == 2


def test_interactive_groups_are_compensated_when_pruned():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    calibration = [torch.randn(32, 4) for _ in range(2)]
    data = torch.cat(calibration)
    errors = {}
    for method in (None, "lstsq"):
        model = copy.deepcopy(dense)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(model, calibration[0], importance="l2", calibration=calibration,
                                          compensation=method, pruning_ratio=0.5)
        for group in pruner.step(interactive=True):
            group.prune()
        with torch.no_grad():
            errors[method] = float((model(data) - dense(data)).pow(2).mean())
    assert model[0].out_features == 8
    assert errors["lstsq"] < 0.5 * errors[None]


class Block(nn.Module):
    def __init__(self, width=8, hidden=16):
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Stack(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.mark.parametrize("sequential", [True, False])
def test_sequential_calibration_sees_the_blocks_before_already_pruned(sequential):
    torch.manual_seed(0)
    model = Stack()
    seen = []  # (block being calibrated, hidden width of block 0 at that moment)
    for index, block in enumerate(model.blocks):
        block.down.register_forward_pre_hook(
            lambda module, args, index=index: seen.append((index, model.blocks[0].up.out_features))
            if args[0].shape[0] == 16 else None)  # calibration batches only, not the checking passes
    calibration = [torch.randn(16, 8) for _ in range(2)]
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 8), importance="flap", compensation="lstsq",
                                  calibration=calibration, pruning_ratio=0.5, sequential=sequential)
    seen.clear()
    pruner.step()
    assert all(b.up.out_features == 8 for b in model.blocks)
    widths_while_calibrating_block_2 = {w for index, w in seen if index == 2}
    # Sequential: blocks 0 and 1 are pruned before block 2 is calibrated (and only the blocks up to it run).
    assert widths_while_calibrating_block_2 == ({8} if sequential else {16})
    if sequential:
        assert [index for index, _ in seen[:2]] == [0, 0]  # the first pass stops after block 0


def test_sequential_and_full_calibration_give_working_models_and_sequential_is_off_without_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 4), importance="wanda", calibration=[torch.randn(4, 4)])
    assert pruner._calibrator.blocks == []  # no hint names a stack: one full pass
