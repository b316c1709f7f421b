"""AttentionLayout: plugins declare where heads live, and the core keeps the block's attributes in step."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core import _plugins


class ToyAttention(nn.Module):
    """Multi-head self-attention written the way third-party code does, reading its own attributes."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.n_heads, self.d_head = heads, dim // heads
        self.inner = heads * self.d_head
        self.scale = self.d_head ** -0.5
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k = (p(x).view(b, t, self.n_heads, -1).transpose(1, 2) for p in (self.q, self.k))
        v = self.v(x).view(b, t, self.n_heads, -1).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.o((weights @ v).transpose(1, 2).reshape(b, t, -1))


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = ToyAttention()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)))


def layout_of(block, **flags):
    return tp.AttentionLayout(block, query="q", key="k", value="v", num_heads="n_heads", head_dim="d_head",
                              width="inner", scale="scale", **flags)


@pytest.fixture
def toy_plugin():
    plugin = types.ModuleType("toy_attention")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        layout_of(m) for m in model.modules() if isinstance(m, ToyAttention)])
    hub = _plugins.get_hub()
    hub.register(plugin, "toy_attention")
    yield hub
    hub.unregister("toy_attention")


def weak_heads(model, heads, dims=None):
    """Make some heads (or some dims of every head) clearly least important to a magnitude criterion."""
    attn = model.attn
    rows = [h * attn.d_head + d for h in heads for d in range(attn.d_head)] if dims is None else \
        [h * attn.d_head + d for h in range(attn.n_heads) for d in dims]
    with torch.no_grad():
        for projection in (attn.q, attn.k, attn.v):
            projection.weight[rows] *= 1e-3
            projection.bias[rows] *= 1e-3
        attn.o.weight[:, rows] *= 1e-3
    return rows


def test_layout_gives_each_projection_its_heads(toy_plugin):
    model = ToyModel()
    hints = {id(h.module): h for h in toy_plugin.structure_hints(model)}
    for projection in (model.attn.q, model.attn.k, model.attn.v):
        hint = hints[id(projection)]
        assert (hint.num_heads, hint.head_dim, hint.provider.name) == (4, 4, "toy_attention")


def test_pruning_whole_heads_equals_zeroing_them(toy_plugin):
    """Zero-contribution oracle: removing heads 1 and 3 gives what the model gives with those heads zeroed."""
    torch.manual_seed(0)
    model = ToyModel().eval()
    rows = weak_heads(model, heads=[1, 3])
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.attn.v.weight[rows] = 0  # a head whose values are zero adds nothing to the output
        reference.attn.v.bias[rows] = 0
    x = torch.randn(2, 5, 6)
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                              prune_num_heads=True, head_pruning_ratio=0.5).step()
    attn = model.attn
    assert (attn.n_heads, attn.d_head, attn.inner, attn.scale) == (2, 4, 8, 0.5)
    assert attn.q.out_features == attn.o.in_features == 8
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_pruning_dims_in_every_head_rescales_by_the_new_head_size(toy_plugin):
    torch.manual_seed(1)
    model = ToyModel().eval()
    rows = weak_heads(model, heads=None, dims=[0, 2])
    x = torch.randn(2, 5, 6)
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              prune_head_dims=True, ignored_layers=[model.embed, model.attn.o]).step()
    attn = model.attn
    assert (attn.n_heads, attn.d_head, attn.inner) == (4, 2, 8)
    assert attn.scale == pytest.approx(0.5 * math.sqrt(4 / 2))
    # The oracle: the unpruned model with those dims zeroed and its scale set to the new one.
    torch.manual_seed(1)
    reference = ToyModel().eval()
    weak_heads(reference, heads=None, dims=[0, 2])
    with torch.no_grad():
        for projection in (reference.attn.q, reference.attn.k, reference.attn.v):
            projection.weight[rows] = 0
            projection.bias[rows] = 0
    reference.attn.scale = attn.scale
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_the_fix_up_finds_modules_by_name_so_trial_copies_are_fixed_too(toy_plugin):
    torch.manual_seed(0)
    model = ToyModel().eval()
    weak_heads(model, heads=[0])
    x = torch.randn(1, 3, 6)
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.0,
                                       prune_num_heads=True, head_pruning_ratio=0.25)
    pruner.step()
    trial = copy.deepcopy(model)  # a copy the graph has never seen, with stale attributes
    trial.attn.n_heads, trial.attn.inner = 4, 16
    toy_plugin.fixup_after_prune(model=trial, modules={"attn": trial.attn}, graph=pruner.DG)
    assert (trial.attn.n_heads, trial.attn.inner) == (3, 12)
    torch.testing.assert_close(trial(x), model(x))


@pytest.mark.parametrize("kwargs, message", [
    (dict(query="q", key="k"), "give the child names of all of query, key and value"),
    (dict(query="q", key="k", value="v", fused="qkv"), "either query, key and value or fused, not both"),
    (dict(query="q", key="k", value="values", head_dim="d_head"), "has no child module 'values'"),
    (dict(query="q", key="k", value="v"), "separate projections need the head_dim"),
    (dict(fused="q", num_heads="heads"), "num_heads names attribute 'heads', which the block does not have"),
    (dict(fused="q", head_dim="scale"), "head_dim names attribute 'scale'.*as an int \\(it is float\\)"),
    (dict(fused="q", head_dim="d_head", scale="inner"), "scale names 'inner', which the block does not have as a float"),
    (dict(fused="q", head_dim="d_head", parts=0), "parts must be a positive int"),
    (dict(fused="q"), "a fused projection needs num_heads or head_dim"),
    (dict(fused="q", head_dim="d_head", prunable_heads="yes"), "prunable_heads must be None, True or False"),
])
def test_layout_validation_names_the_field(kwargs, message):
    with pytest.raises(tp.PluginError, match=message):
        tp.AttentionLayout(ToyAttention(), **kwargs)
    with pytest.raises(tp.PluginError, match="module must be the attention block"):
        tp.AttentionLayout(object(), fused="")


def test_a_plugin_returning_a_bad_layout_is_isolated():
    hub = _plugins.get_hub()
    plugin = types.ModuleType("bad_layout")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [tp.AttentionLayout(model, fused="nope", parts=3)])
    hub.register(plugin, "bad_layout")
    try:
        assert hub.structure_hints(ToyModel()) == []
        assert "has no child module 'nope'" in hub.infos["bad_layout"].error
    finally:
        hub.unregister("bad_layout")


def test_the_reason_shown_for_kept_heads_is_the_option_that_keeps_them(toy_plugin):
    # The heads' count is a size written in code (n_heads) until the layout explains it; with head
    # pruning off, "whole heads are kept" is why, and it comes first (inspect shows the first reason).
    model = ToyModel().eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(2, 5, 6), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5, prune_head_dims=False)
    reasons = pruner.DG.frozen_reasons()
    assert reasons["attn.o [in]"][0] == "attn.q: whole heads are kept"
    from pruning_core.cli.inspect_cmd import plain_reason

    assert "prune_num_heads=True" in plain_reason(reasons["attn.o [in]"][0])
