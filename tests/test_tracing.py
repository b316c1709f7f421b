"""Tracing that users cannot trip over: no autograd, any input/output form, meta tensors, clear refusals."""

from __future__ import annotations

import collections
import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
from pruning_core import _plugins
from pruning_core.testing.oracle import oracle_check, run


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))))


X = torch.randn(2, 3, 8, 8)


def _conv_group(DG, model):
    return DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=[0, 3])


def test_works_under_no_grad_with_frozen_parameters():
    model = Small().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, X)
        group = _conv_group(DG, model)
        assert {item.dep.target.qualname for item in group} == {"conv", "bn", "head"}
        group.prune()
    assert not model.conv.weight.requires_grad
    assert run(model, X).shape == (2, 4, 8, 8)


def test_training_mode_trace_leaves_batchnorm_statistics_untouched():
    model = Small().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tp.DependencyGraph().build_dependency(model, X)
    after = model.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert model.training


class MultiInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(6, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, first, second=None, scale=1.0):
        return {"logits": self.out(F.relu(self.a(first) + self.b(second)) * scale)}


@pytest.mark.parametrize("form", ["tuple", "list", "dict", "kwargs"])
def test_inputs_as_tuple_list_dict_or_kwargs(form):
    model = MultiInput()
    first, second = torch.randn(3, 4), torch.randn(3, 6)
    DG = tp.DependencyGraph()
    if form == "tuple":
        DG.build_dependency(model, (first, second))
    elif form == "list":
        DG.build_dependency(model, [first, second])
    elif form == "dict":
        DG.build_dependency(model, {"first": first, "second": second})
    else:
        DG.build_dependency(model, first, example_kwargs={"second": second, "scale": 2.0})
    group = DG.get_pruning_group(model.a, tp.prune_linear_out_channels, idxs=[1, 2])
    assert {item.dep.target.qualname for item in group} == {"a", "b", "out"}
    group.prune()
    assert model(first, second)["logits"].shape == (3, 2)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class FakeModelOutput(collections.OrderedDict):
    """Shaped like transformers' ModelOutput: an ordered dict with attribute access."""


class OutputForms(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        hidden = F.relu(self.fc1(x))
        logits = self.fc2(hidden)
        if self.form == "tuple":
            return logits, logits.sum()
        if self.form == "list":
            return [logits]
        if self.form == "dict":
            return {"logits": logits}
        if self.form == "dataclass":
            return Output(logits, hidden)
        return FakeModelOutput(logits=logits)


@pytest.mark.parametrize("form", ["tuple", "list", "dict", "dataclass", "model_output"])
def test_outputs_of_any_container_need_no_output_transform(form):
    model = OutputForms(form)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    groups = list(DG.get_all_groups())
    if form == "dataclass":
        # The hidden layer is returned too, so its width is part of the output: nothing to prune.
        assert groups == []
    else:
        assert len(groups) == 1 and groups[0].root_slot.target.qualname == "fc1"
    # Groups keep model outputs; an explicit request for one is honoured, as in Torch-Pruning.
    assert all(g.root_slot.target.qualname != "fc2" for g in groups)
    DG.get_pruning_group(model.fc2, tp.prune_linear_out_channels, idxs=[0]).prune()
    assert model.fc2.out_features == 2 and model.fc2.weight.shape == (2, model.fc2.in_features)
    model(torch.randn(2, 4))


def test_output_transform_and_forward_fn_are_used():
    model = OutputForms("dataclass")
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4), output_transform=lambda out: out.logits)
    assert len(list(DG.get_all_groups())) == 1
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4), forward_fn=lambda m, x: m(x).logits)
    assert len(list(DG.get_all_groups())) == 1


def test_meta_device_graph_for_a_model_larger_than_ram():
    # 24 layers of 16384 x 16384 fp32 would be 26 GB; on meta nothing is allocated.
    with torch.device("meta"):
        layers = [nn.Sequential(nn.Linear(16384, 16384), nn.GELU()) for _ in range(24)]
        model = nn.Sequential(*layers, nn.Linear(16384, 10))
        x = torch.randn(1, 16384)
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = list(DG.get_all_groups())
    assert len(groups) == 24
    groups[0].prune(idxs=list(range(0, 16384, 2)))
    assert model[0][0].out_features == 8192 and model[1][0].in_features == 8192
    assert model[0][0].weight.device.type == "meta"


def test_transformer_encoder_fast_path_does_not_hide_layers():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, x)
    roots = {g.root_slot.target.qualname for g in DG.get_all_groups()}
    assert {"layers.0.linear1", "layers.1.linear1"} <= roots
    assert DG.unsupported_ops == []


def test_unknown_operator_freezes_its_channels_and_is_reported():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 8, 1)
            self.mix = nn.Conv1d(8, 8, 1)
            self.out = nn.Conv1d(5, 2, 1)

        def forward(self, x):
            y = self.mix(F.relu(self.conv(x)))
            spectrum = torch.fft.rfft(y, dim=1).abs()  # mixes channels: not element-wise
            return self.out(spectrum)

    model = Spectral()
    x = torch.randn(2, 3, 10)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert any("fft" in op.op for op in DG.unsupported_ops)
    roots = {g.root_slot.target.qualname for g in DG.get_all_groups()}
    assert roots == {"conv"}  # mix feeds the FFT: its channels stay
    with pytest.raises(tp.GraphError, match="fft"):
        DG.get_pruning_group(model.mix, tp.prune_conv_out_channels, idxs=[0])


class Unhandled(nn.Module):
    """A parametrised layer nobody registered a handler for, whose parameter goes through an unknown op."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x @ torch.linalg.matrix_exp(self.weight)


def test_unknown_parametrised_module_is_never_treated_as_elementwise():
    model = nn.Sequential(nn.Linear(4, 8), Unhandled(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert list(DG.get_all_groups()) == []
    assert any(op.scope == "1" for op in DG.unsupported_ops)
    with pytest.raises(tp.NoHandlerError, match=r"no handler for 1 \(Unhandled\).*customized_pruners"):
        DG.get_pruning_group(model[1], tp.prune_linear_out_channels, idxs=[0])


def test_missing_handler_error_names_the_plugin_extra(monkeypatch):
    framework_layer = type("FancyAttention", (Unhandled,), {"__module__": "transformers.models.fancy.modeling"})
    model = nn.Sequential(nn.Linear(4, 8), framework_layer(), nn.Linear(8, 2))
    monkeypatch.setenv("PRUNING_CORE_PLUGINS", "none")
    _plugins.reset_hub()
    try:
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 4))
        with pytest.raises(tp.NoHandlerError, match=r'pip install "pruning-core\[hf\]"'):
            DG.get_pruning_group(model[1], tp.prune_linear_out_channels, idxs=[0])
    finally:
        monkeypatch.delenv("PRUNING_CORE_PLUGINS")
        _plugins.reset_hub()


def test_ambiguous_channel_dim_of_a_custom_layer_is_an_error_not_a_guess():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 6))

        def forward(self, x):
            return x @ self.w

    class Handler:
        def prune_out_channels(self, layer, idxs):
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return 6

        get_in_channels = get_out_channels

    model = nn.Sequential(nn.Linear(6, 6), Mixer())
    with pytest.raises(tp.GraphError, match="cannot tell which dimension.*channel_dim"):
        tp.DependencyGraph().build_dependency(model, torch.randn(6, 6), customized_pruners={Mixer: Handler()})


def test_wrapped_models_are_refused_with_the_unwrap_instruction():
    model = Small()
    with pytest.raises(tp.UnsupportedModelError, match="model.module"):
        tp.DependencyGraph().build_dependency(nn.DataParallel(model), X)


def test_weights_used_directly_by_the_parent_are_traced_through_the_weights():
    class FunctionalAttn(nn.Module):
        """Like torchvision's Swin: the projection modules are never called, their weights are."""

        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.proj = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            h = self.inp(x)
            return self.out(F.relu(F.linear(h, self.proj.weight, self.proj.bias)))

    model = FunctionalAttn()
    x = torch.randn(3, 4)
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.inp, tp.prune_linear_out_channels, idxs=[1]))
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.inp, tp.prune_linear_out_channels, idxs=[1]).prune()
    assert model.proj.in_features == 7  # attributes follow the weights


def test_repeated_blocks_give_proportional_structure():
    def build(depth):
        model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(depth)])
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 64), validate=False)
        groups = list(DG.get_all_groups())
        sizes = [len(g) for g in groups]
        return len(DG.traced.recorder.nodes) - 2, len(groups), max(sizes)

    small, large = build(8), build(64)
    # Per-layer structure is constant, so graph size is proportional to depth and each group stays local.
    # (Wall-clock scaling is measured in benchmarks/, not asserted here.)
    assert large[0] == 8 * small[0]
    assert large[1] + 1 == 8 * (small[1] + 1)  # the last layer feeds the output
    assert large[2] == small[2] == 2


class BlurredConv(nn.Module):
    """A fixed per-channel filter kept as a buffer and applied with F.conv2d (timm's BlurPool, TResNet)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.register_buffer("filt", torch.rand(6, 1, 3, 3))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(F.conv2d(y, self.filt, padding=1, groups=y.shape[1]))


def test_buffer_used_directly_is_pruned_with_its_channels():
    # Regression (sweep, timm tresnet_m): buffer slots had no handler, scoring crashed.
    model = BlurredConv().eval()
    x = torch.randn(1, 3, 8, 8)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.conv, tp.prune_conv_out_channels, [1, 4]))
    assert any(item.dep.target.qualname == "filt" for item in group)
    pruned = copy.deepcopy(model)
    tp.pruner.MagnitudePruner(pruned, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              ignored_layers=[pruned.head]).step()
    assert pruned.filt.shape[0] == pruned.conv.out_channels == 3


class WeightUsedDirectly(nn.Module):
    """A projection whose weight is applied with F.linear, as timm's EVA, BEiT and SwinV2 attention do."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.num_heads, self.head_dim = 2, 4
        self.out = nn.Linear(24, 3)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.out(F.linear(x, self.qkv.weight))


def test_layer_whose_weight_is_used_directly_is_pruned_through_it():
    # Regression (sweep, timm vit_*_dinov3): a head hint on such a projection raised NoHandlerError,
    # and its output channels had no group at all.
    model = WeightUsedDirectly().eval()
    x = torch.randn(2, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert not DG.ran_as_module(model.qkv) and DG.ran_as_module(model.out)
    with pytest.raises(tp.GraphError, match="not called as a module"):
        DG.module_slots(model.qkv)
    assert DG.has_channels(model.qkv) and DG.channel_structure("qkv") == [24]
    with pytest.raises(tp.ConfigurationError, match="num_heads.*unused"):
        tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  num_heads={model.unused: 2}, ignored_layers=[model.out])
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                              num_heads={model.qkv: 2}, prune_num_heads=True, head_pruning_ratio=0.5,
                              ignored_layers=[model.out]).step()
    assert model.qkv.weight.shape == (12, 8) and model.out.in_features == 12  # one whole head of 12
    assert run(model, x).shape == (2, 3)


def test_ignoring_a_layer_whose_weight_is_used_directly_keeps_it():
    model = WeightUsedDirectly().eval()
    x = torch.randn(2, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    rooted = [g for g in DG.get_all_groups(root_module_types=None)]
    assert any(g[0].dep.target.owner is model.qkv for g in rooted)  # without ignoring, it is a root
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              ignored_layers=[model.qkv, model.out]).step()
    assert model.qkv.weight.shape == (24, 8) and model.out.in_features == 24


class Detector(nn.Module):
    """Post-processing like a detector's: how many detections survive, and so the output sizes, depends on data."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.score = nn.Conv2d(16, 1, 1)
        self.mask = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        features = F.relu(self.body(x))
        scores = self.score(features).flatten()
        keep = torch.nonzero(scores > 0).flatten()[:20]
        masks = self.mask(features).flatten(2)[0].t()[keep]  # (detections, 2)
        pasted = torch.stack([torch.zeros(4).index_add(0, torch.tensor([0, 1]), m) for m in masks])
        return scores[keep], pasted


def test_outputs_whose_size_the_data_decides_do_not_block_pruning():
    # Regression (sweep, Mask R-CNN): the detection count changed after pruning, and every group was refused.
    torch.manual_seed(0)
    model = Detector().eval()
    x = torch.randn(1, 3, 6, 6)
    detections_before = run(model, x)[0].shape[0]
    DG = tp.DependencyGraph().build_dependency(model, x)
    dynamic = DG.traced.recorder.output_dynamic
    assert dynamic == [(True,), (True, False)]  # detection counts vary; the pasted width (4) does not
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refused group would warn
        tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.score, model.mask]).step()
    assert model.body.out_channels == 8
    scores, pasted = run(model, x)
    assert pasted.shape[1:] == (4,) and scores.shape[0] == pasted.shape[0]
    assert scores.shape[0] != detections_before  # the case this guards: the count really changed


class WithUnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 1)
        self.aux = nn.Conv2d(8, 2, 1)  # run in no mode (a training-only head is traced in training mode)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_layers_the_forward_did_not_reach_are_named_in_a_warning():
    model = WithUnusedHead().eval()
    with pytest.warns(tp.pruner.PruningWarning, match=r"1 layer\(s\) .* did not run .*: aux\."):
        tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))
    del model.aux
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say when every layer ran
        tp.DependencyGraph().build_dependency(model.train(), torch.randn(2, 3, 4, 4))


def test_a_fixed_size_may_follow_a_data_decided_size_in_lockstep():
    from pruning_core.graph.validate import shapes_match

    # Keypoint R-CNN: boxes (N, 4) are data-decided; keypoints are torch.zeros(len(boxes), 17, 3) in Python.
    reference, dynamic = [(5, 4), (5, 17, 3)], [(True, False), (False, False, False)]
    assert shapes_match(reference, [(3, 4), (3, 17, 3)], dynamic)
    assert not shapes_match(reference, [(3, 4), (4, 17, 3)], dynamic)  # not the same change
    assert not shapes_match(reference, [(5, 4), (3, 17, 3)], dynamic)  # no data-decided dim changed
    assert not shapes_match(reference, [(3, 4), (3, 17, 2)], dynamic)
    assert not shapes_match(reference, [(3, 4)], dynamic)


def test_layers_pruned_by_their_parents_handler_are_not_reported_as_unreached():
    # Regression: MultiheadAttention.out_proj is pruned by the attention handler, yet was reported
    # as a layer "the traced forward never reached".
    model = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.DependencyGraph().build_dependency(model, torch.randn(2, 5, 16))
    assert not [w for w in caught if "did not run" in str(w.message)]


def test_a_layer_whose_parameter_has_one_channel_left_is_not_reported_as_unreached():
    """A scale pruned down to one channel has no dim larger than 1 (so no slot), but it ran."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.scale, self.head = nn.Conv2d(3, 1, 3), nn.Module(), nn.Conv2d(1, 4, 1)
            self.scale.weight = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.head(self.stem(x) * self.scale.weight.view(1, -1, 1, 1))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.DependencyGraph().build_dependency(Scaled(), torch.randn(1, 3, 8, 8))
    assert not [w for w in caught if "did not run" in str(w.message)]


class WithUnusedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.aux = nn.Linear(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_unreached_layer_warning_names_it_and_points_at_the_callers_line():
    model = WithUnusedLinear().eval()
    with pytest.warns(tp.pruner.PruningWarning, match="aux") as record:
        tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    assert record[0].filename == __file__


def test_a_forward_that_needs_values_is_traced_once_on_meta_then_on_real_weights(monkeypatch):
    """``.item()`` fails on meta whatever the size tracking: the tracer goes to real weights next, not to a
    second meta trace without tracked sizes (a whole wasted forward on a large model)."""
    from pruning_core.graph import build

    class NeedsValues(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x):
            if x.abs().sum().item() >= 0:  # a value-dependent branch, as transformers' mask creation has
                x = torch.relu(self.a(x))
            return self.b(x)

    calls = []
    real_run = build.run_trace
    monkeypatch.setattr(build, "run_trace", lambda *a, **k: calls.append((k.get("on_meta"), k["symbolic"]))
                        or real_run(*a, **k))
    model = NeedsValues()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, 4))
    assert calls == [(True, True), (None, True)]
    group = dg.get_pruning_group(model.a, tp.prune_linear_out_channels, idxs=[0, 1, 2])
    group.prune()
    assert model.a.out_features == 5 and model.b.in_features == 5


def test_the_first_reason_for_kept_channels_is_what_blocks_them():
    # The view sizes the output in code (a structure a hint could unlock); being the model's output is what
    # actually keeps the channels, so inspect, which shows the first reason, must say that.
    class Reshaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)

        def forward(self, x):
            y = self.fc(x)
            return y.view(y.shape[0], 2, 4)

    DG = tp.DependencyGraph().build_dependency(Reshaped(), example_inputs=torch.randn(3, 6))
    assert DG.frozen_reasons()["fc [out]"] == ["model output", "size written in code at aten::view in the model"]
