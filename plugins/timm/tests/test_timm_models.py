"""timm models prune with no user patch, and timm's own APIs keep working afterwards."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

import pruning_core as tp  # noqa: E402
from pruning_core_timm.blocks import final_classifiers  # noqa: E402

# name, create_model keyword arguments (smaller depths keep the test fast), whether to prune heads
MODELS = [
    ("vit_tiny_patch16_224", {"depth": 4}, True),
    ("deit_tiny_distilled_patch16_224", {"depth": 2}, True),
    ("vit_tiny_patch16_dinov3_qkvb", {"depth": 2}, True),
    ("poolformerv2_s12", {}, False),
    ("convnext_atto", {}, False),
    ("efficientnet_b0", {}, False),
    ("maxvit_pico_rw_256", {}, False),
    ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 2, 1)}, True),
    ("mixer_s16_224", {}, False),
    ("levit_128s", {}, False),
    ("mobilenetv3_small_050", {}, False),  # num_features (last stage) differs from head_hidden_size
    ("skresnet18", {}, False),
    ("nf_regnet_b0", {}, False),  # ScaledStdConv2d: gain per output channel  # selective-kernel attention: a structure hint on fc_select
]


def build(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    return model, torch.randn(1, *model.pretrained_cfg["input_size"])


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,kwargs,heads", MODELS, ids=[m[0] for m in MODELS])
def test_prune_and_use_timm_apis(name, kwargs, heads):
    model, x = build(name, kwargs)
    with torch.no_grad():
        reference = model(x)
        features = model.forward_features(x)
    # The channel dim of forward_features: NCHW for CNNs, last for tokens and NHWC (Swin).
    channel_dim = 1 if features.ndim == 4 and features.shape[1] == model.num_features else -1
    assert features.shape[channel_dim] == model.num_features
    cfg_before = dict(model.pretrained_cfg)
    before = count(model)
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                       prune_num_heads=heads, ignored_layers=final_classifiers(model))
    pruner.step()
    assert count(model) < 0.8 * before
    with torch.no_grad():
        assert model(x).shape == reference.shape
        features = model.forward_features(x)
        assert features.shape[channel_dim] == model.num_features
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape[-1] == model.head_hidden_size
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
    assert model.pretrained_cfg == cfg_before


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")]


def _head_size(attention) -> int:
    return attention.qkv.out_features // (3 * attention.num_heads)


def _zero_removed_heads(query_rows, kept_query_rows, size, output_weight) -> None:
    """Find which heads survived by their query rows, and zero the others' columns of the output projection."""
    heads, kept_heads = query_rows.shape[0] // size, kept_query_rows.shape[0] // size
    kept = {h for h in range(heads)
            if any(torch.equal(query_rows[h * size:(h + 1) * size], kept_query_rows[k * size:(k + 1) * size])
                   for k in range(kept_heads))}
    assert len(kept) == kept_heads
    with torch.no_grad():
        for h in set(range(heads)) - kept:
            output_weight[:, h * size:(h + 1) * size] = 0


@pytest.mark.parametrize("name,kwargs", [("vit_tiny_patch16_224", {"depth": 2}),
                                         ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 2, 1)})],
                         ids=["vit", "swin"])
def test_head_pruning_needs_no_patch_and_matches_zeroed_heads(name, kwargs):
    model, x = build(name, kwargs)
    twin = copy.deepcopy(model)
    heads_before = [a.num_heads for a in _attention_modules(model)]
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                                       prune_num_heads=True, head_pruning_ratio=0.5,
                                       ignored_layers=final_classifiers(model))
    pruner.step()
    for attention, before in zip(_attention_modules(model), heads_before):
        assert attention.num_heads == before - before // 2  # half, rounded to keep more
        assert attention.qkv.out_features == 3 * attention.num_heads * _head_size(attention)
        assert attention.proj.in_features == attention.num_heads * _head_size(attention)
        table = getattr(attention, "relative_position_bias_table", None)
        assert table is None or table.shape[1] == attention.num_heads  # Swin's per-head position biases
    # Oracle: removing heads equals zeroing their share of the output projection.
    for pruned, original in zip(_attention_modules(model), _attention_modules(twin)):
        size = _head_size(original)
        assert _head_size(pruned) == size
        _zero_removed_heads(original.qkv.weight[: original.num_heads * size],
                            pruned.qkv.weight[: pruned.num_heads * size], size, original.proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-4, atol=1e-5)


def test_metaformer_scale_shape_follows_its_parameter():
    model, x = build("poolformerv2_s12", {})
    scales = [m for m in model.modules() if type(m).__name__ == "Scale"]
    assert scales and all(isinstance(s.shape, tuple) for s in scales)
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              ignored_layers=final_classifiers(model)).step()
    assert any(s.scale.numel() < 320 for s in scales)
    for scale in scales:
        assert scale.shape[0] == scale.scale.numel()
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_pruned_timm_model_saves_and_loads(tmp_path):
    model, x = build("vit_tiny_patch16_224", {"depth": 2})
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              prune_num_heads=True, ignored_layers=final_classifiers(model)).step()
    tp.save_pruned(model, tmp_path / "vit")
    fresh, _ = build("vit_tiny_patch16_224", {"depth": 2})
    tp.load_pruned(fresh, tmp_path / "vit")
    assert [a.num_heads for a in _attention_modules(fresh)] == [a.num_heads for a in _attention_modules(model)]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_timm_model_spec_on_the_command_line(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pruning_core", "prune", "timm:convnext_atto", "--ratio", "0.25",
                             "--output", str(output), "--json", "--no-latency"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"]
    assert report["after"]["params"] < report["before"]["params"]
    fresh = timm.create_model("convnext_atto", pretrained=False).eval()
    tp.load_pruned(fresh, str(output))
    assert fresh.num_features < 320 and fresh(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_plugin_imports_without_timm():
    code = ("import sys, pruning_core, pruning_core_timm.plugin; "
            "assert 'timm' not in sys.modules, sorted(m for m in sys.modules if m.startswith('timm'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_swinv2_heads_prune_through_the_concatenated_qkv_bias():
    # SwinV2 applies qkv.weight with F.linear and a cat of q/k/v biases; its per-head MLP bias follows.
    # Its attention reshapes back to the input width (`reshape(B, N, C)`), so heads can only go where the
    # block's width shrinks with them: prune both, and the verification keeps the rest.
    model, x = build("swinv2_tiny_window8_256", {"depths": (1, 1, 2, 1)})
    before = [a.num_heads for a in _attention_modules(model)]
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              prune_num_heads=True, head_pruning_ratio=0.5,
                              ignored_layers=final_classifiers(model)).step()
    after = [a.num_heads for a in _attention_modules(model)]
    assert any(a < b for a, b in zip(after, before)), (before, after)
    for attention in _attention_modules(model):
        assert attention.cpb_mlp[-1].out_features == attention.num_heads
        assert attention.logit_scale.shape[0] == attention.num_heads
        assert attention.qkv.out_features == 3 * attention.num_heads * _head_size(attention)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_trial_forward_of_a_head_removal_passes():
    # Regression: trial forwards hand the fix-up copies of the modules; it must still find the new head
    # count (by name), or validation wrongly refuses every whole-head group.
    model, x = build("vit_tiny_patch16_224", {"depth": 1})
    qkv = model.blocks[0].attn.qkv
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                                       prune_num_heads=True, ignored_layers=final_classifiers(model))
    group = pruner.DG.get_pruning_group(qkv, tp.prune_linear_out_channels, list(range(64)))  # q of head 0
    assert len(group[0].idxs) == 3 * 64  # the head's q, k and v rows go together
    assert pruner.DG.check_pruning_group(group), group.check_failure
    assert model.blocks[0].attn.num_heads == 3  # a check leaves the model untouched


def test_scaled_std_conv_keeps_gain_and_scale_in_step():
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), ScaledStdConv2d(6, 8, 3, gamma=2.0), nn.Conv2d(8, 2, 1)).eval()
    conv = model[1]
    with torch.no_grad():
        conv.gain.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 5, 5)
    hidden = model[0](x)
    expected = conv(hidden)
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(conv, tp.prune_conv_out_channels, [1, 4])
    assert "ScaledStd" in repr(group[0].dep.handler)  # the plugin's handler, found from the layer's class
    group.prune()
    # Standardization is per output channel, so the kept channels are unchanged.
    torch.testing.assert_close(conv(hidden), expected[:, [0, 2, 3, 5, 6, 7]])
    assert conv.gain.shape == (6, 1, 1, 1)
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1]).prune()
    assert conv.weight.shape[1] == 4 and conv.scale == pytest.approx(2.0 / (4 * 9) ** 0.5)
    assert model(x).shape == (1, 2, 5, 5)


# Attention reshaped with num_heads/head_dim attributes (PVT-v2, GC-ViT), split sizes kept as attributes
# (InceptionNeXt's split_indexes, CoaT's channel_splits, SKNet, SHViT, EfficientViT-M): each kept 52-77% of
# its parameters at ratio 0.5 while those sizes were constants to the tracer.
SIZED_BY_ATTRIBUTES = [
    ("pvt_v2_b0", {"depths": (1, 1, 1, 1)}),
    ("gcvit_xxtiny", {}),
    ("inception_next_atto", {}),
    ("coat_lite_tiny", {}),
    ("skresnet18", {}),  # torch.split(x, self.in_channels // self.num_paths)
    ("shvit_s1", {"depth": (1, 1, 1)}),  # torch.split(x, [self.pdim, self.dim - self.pdim])
    ("efficientvit_m0", {"depth": (1, 1, 1)}),  # split([self.key_dim, self.key_dim, self.val_dim])
    ("nextvit_small", {}),  # reshape(B, N, self.num_heads, self.head_dim)
    ("coat_tiny", {"serial_depths": (1, 1, 1, 1), "parallel_depth": 1}),
]


@pytest.mark.parametrize("name,kwargs", [pytest.param(n, k, id=n, marks=[pytest.mark.slow] * (n in ("nextvit_small",
                                                                                        "gcvit_xxtiny")))
                                         for n, k in SIZED_BY_ATTRIBUTES])
def test_sizes_kept_as_attributes_follow_pruning(name, kwargs):
    model, x = build(name, kwargs)
    with torch.no_grad():
        reference = model(x)
    before = count(model)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert count(model) < 0.4 * before  # both sides of most layers halve: about a quarter is left
    with torch.no_grad():
        assert model(x).shape == reference.shape
    model.train()
    model(torch.cat([x, x])).square().mean().backward()  # two samples: batch norm of 1x1 maps needs them
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_heads_of_wrapped_separate_projections_prune_and_match_zeroed_heads():
    # Gemma 4's vision attention: q/k/v/o projections wrap their Linear, heads read from attributes.
    model, x = build("gemma4_vit_167m", {"depth": 2})
    twin = copy.deepcopy(model)
    attentions = lambda m: [a for a in m.modules() if hasattr(a, "q_proj") and hasattr(a, "num_heads")]  # noqa: E731
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                                       prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    pruner.step()
    for pruned, original in zip(attentions(model), attentions(twin)):
        size = original.head_dim
        assert (pruned.num_heads, pruned.num_kv_heads, pruned.head_dim) == (original.num_heads // 2,) * 2 + (size,)
        assert pruned.q_proj.linear.out_features == pruned.num_heads * size == pruned.o_proj.linear.in_features
        _zero_removed_heads(original.q_proj.linear.weight, pruned.q_proj.linear.weight, size,
                            original.o_proj.linear.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-4, atol=1e-5)


def test_inspect_names_the_kept_heads_first_for_a_fused_qkv():
    """qkv's rows are (part, head, dim): kept heads are frozen, the part count is only a size written in code,
    so the reason inspect shows first for qkv (and its consumer) is the option that keeps the heads."""
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, depth=1).eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 224, 224), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5, prune_head_dims=False)
    reasons = pruner.DG.frozen_reasons()
    assert reasons["blocks.0.attn.qkv [out]"][0] == reasons["blocks.0.attn.proj [in]"][0] == \
        "blocks.0.attn.qkv: whole heads are kept"


@pytest.mark.parametrize("mode", ["heads", "head dims"])
def test_torch_pruning_vit_recipe_on_three_heads(mode):
    """DeiT/ViT-Tiny has 3 heads, as many as the q, k and v its fused qkv is unbound into; the heads
    declared by the recipe (num_heads={m.qkv: m.num_heads}) are the heads, not the three parts."""
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, depth=2).eval()
    x = torch.randn(1, 3, 224, 224)
    attns = [m for m in model.modules() if isinstance(m, timm.models.vision_transformer.Attention)]
    options = dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5) if mode == "heads" \
        else dict(prune_head_dims=True)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.head],
                                  num_heads={m.qkv: m.num_heads for m in attns}, **options)
    for group in pruner.step(interactive=True):
        group.prune()
    expected = (2, 64) if mode == "heads" else (3, 32)
    for m in attns:  # the recipe's update, after the plugin already set the same values
        assert (m.num_heads, m.head_dim) == expected
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        assert (m.num_heads, m.head_dim) == expected
    assert model(x).shape == (1, 10)
