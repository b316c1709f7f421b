"""Sizes Python computes from shapes and module attributes are followed, so pruning keeps them in step.

Each model below sizes a reshape, view or split with a number the tracer used to see as a
constant written in code; the channels it touched stayed frozen. Each test checks the widths
pruning reaches, the zero-contribution oracle (pruning a group equals zeroing it), and that the
pruned model still trains (one backward pass in train mode).
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
from pruning_core import _plugins
from pruning_core.testing.oracle import oracle_check


def trains(model: nn.Module, inputs: torch.Tensor) -> None:
    model.train()
    model(inputs).square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


class ShapeRead(nn.Module):
    """``C = x.shape[1]`` sizes a reshape that cuts a fused projection into three parts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fused = nn.Linear(32, 96)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        parts = self.fused(t).reshape(B, H * W, 3, C)
        return self.head(parts.sum(2).mean(1))


class HeadSplit(nn.Module):
    """``C // self.heads`` cuts the channels into heads: pruning keeps the heads and thins each."""

    def __init__(self, channels: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(8, channels)
        self.out = nn.Linear(channels, 5)
        self.heads = heads

    def forward(self, x):
        y = self.inp(x)
        B, N, C = y.shape
        h = y.reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3).cumsum(2)
        return self.out(h.permute(0, 2, 1, 3).reshape(B, N, C))


class AttributeView(nn.Module):
    """``view(-1, self.conv.in_channels, 2, 2)``: a layer's size attribute sizes the view."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Linear(16, 64)
        self.conv = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.expand(self.stem(x).mean((2, 3)))
        y = y.view(-1, self.conv.in_channels, 2, 2)
        return self.fc(self.conv(y).mean((2, 3)))


class PartialConv(nn.Module):
    """FasterNet's partial convolution: ``torch.split`` at sizes stored as attributes."""

    def __init__(self, dim: int, n_div: int = 4) -> None:
        super().__init__()
        self.dim_conv = dim // n_div
        self.dim_untouched = dim - self.dim_conv
        self.pconv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, padding=1, bias=False)

    def forward(self, x):
        a, b = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.pconv(a), b), 1)


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.partial = PartialConv(32)
        self.head = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.head(self.partial(self.stem(x))).mean((2, 3)))


@pytest.fixture
def partial_conv_plugin():
    plugin = types.ModuleType("partial_conv_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        tp.SizeAttribute(m, ("dim_conv", "dim_untouched")) for m in model.modules() if isinstance(m, PartialConv)])
    hub = _plugins.get_hub()
    hub.register(plugin, "partial_conv_sizes")
    yield
    hub.unregister("partial_conv_sizes")


def test_a_reshape_sized_by_a_shape_read_in_python_follows_pruning():
    model, x = ShapeRead().eval(), torch.randn(2, 3, 4, 4)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.conv, tp.prune_conv_out_channels, [1, 5]))
    fused_rows = [sorted(idxs) for dep, idxs in group if dep.handler == tp.prune_linear_out_channels]
    assert fused_rows == [[1, 5, 33, 37, 65, 69]]  # the same channel in each of the three parts
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.conv.out_channels, model.fused.in_features, model.fused.out_features, model.head.in_features) == \
        (16, 16, 48, 16)
    trains(model, x)


def test_a_size_divided_by_a_head_count_keeps_the_heads_and_thins_each():
    model, x = HeadSplit().eval(), torch.randn(2, 6, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(model.inp, tp.prune_linear_out_channels, idxs=[0])
    assert sorted(group[0].idxs) == [0, 4, 8, 12]  # the same dim of every head
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.inp, tp.prune_linear_out_channels, [1]))
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.inp.out_features == 8 and model.out.in_features == 8 and model.heads == 4
    trains(model, x)


def test_a_view_sized_by_a_layer_attribute_follows_that_layer():
    model, x = AttributeView().eval(), torch.randn(2, 3, 6, 6)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.conv, tp.prune_conv_in_channels, [3]))
    assert [sorted(idxs) for dep, idxs in group if dep.handler == tp.prune_linear_out_channels] == [[12, 13, 14, 15]]
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.conv.in_channels, model.expand.out_features, model.conv.out_channels) == (8, 32, 4)
    trains(model, x)


def test_a_split_at_declared_size_attributes_prunes_both_parts_and_updates_them(partial_conv_plugin):
    model, x = SplitNet().eval(), torch.randn(2, 3, 6, 6)
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem, tp.prune_conv_out_channels, [0, 20]))
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.stem.out_channels == 16
    assert (model.partial.dim_conv, model.partial.dim_untouched) == (4, 12)
    assert model.partial.pconv.in_channels == 4
    trains(model, x)


def test_without_the_declaration_the_split_stays_as_written():
    model, x = SplitNet().eval(), torch.randn(2, 3, 6, 6)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.stem.out_channels == 32 and model.partial.dim_conv == 8
    model(x)


def test_declared_size_attributes_are_saved_and_loaded(partial_conv_plugin, tmp_path):
    model, x = SplitNet().eval(), torch.randn(2, 3, 6, 6)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    expected = model(x)
    tp.save_pruned(model, str(tmp_path / "saved"))
    fresh = tp.load_pruned(SplitNet().eval(), str(tmp_path / "saved"))
    assert (fresh.partial.dim_conv, fresh.partial.dim_untouched) == (4, 12)
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_a_size_attribute_that_is_not_an_int_is_a_plugin_error():
    with pytest.raises(tp.PluginError, match="'pconv' must be an int attribute"):
        tp.SizeAttribute(PartialConv(8), "pconv")


def test_traced_sizes_do_not_stay_on_the_model():
    # Size attributes are traced ints only while tracing; afterwards they are plain ints again.
    model, x = AttributeView().eval(), torch.randn(2, 3, 6, 6)
    tp.DependencyGraph().build_dependency(model, x)
    assert all(type(getattr(m, a)) is int for m in (model.conv, model.stem) for a in ("in_channels", "out_channels"))
    assert type(model.expand.in_features) is int and type(model.expand.out_features) is int


class AttributeAttention(nn.Module):
    """MaxViT-style attention: ``reshape(B, N, self.n_heads, self.head_dim)`` on each of q, k and v."""

    def __init__(self, dim: int = 32, head_dim: int = 8) -> None:
        super().__init__()
        self.n_heads, self.head_dim = dim // head_dim, head_dim
        self.embed = nn.Linear(8, dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.merge = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x)
        B, N, _ = t.shape
        q, k, v = (p.reshape(B, N, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in torch.chunk(self.to_qkv(t), 3, dim=-1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.head(self.merge(a.reshape(B, N, self.n_heads * self.head_dim)))


@pytest.fixture
def attention_sizes_plugin():
    plugin = types.ModuleType("attention_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        tp.SizeAttribute(m, "head_dim", counts="n_heads") for m in model.modules()
        if isinstance(m, AttributeAttention)])
    hub = _plugins.get_hub()
    hub.register(plugin, "attention_sizes")
    yield
    hub.unregister("attention_sizes")


def test_a_declared_head_size_thins_every_head_and_a_declared_count_keeps_the_heads(attention_sizes_plugin):
    model, x = AttributeAttention().eval(), torch.randn(2, 6, 8)
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.merge, tp.prune_linear_in_channels, [0]),
                 exact=False)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.n_heads, model.head_dim) == (4, 4)
    assert (model.to_qkv.out_features, model.merge.in_features) == (48, 16)
    trains(model, x)


def test_without_the_declaration_attention_sized_by_attributes_is_kept():
    model, x = AttributeAttention().eval(), torch.randn(2, 6, 8)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.n_heads, model.head_dim, model.to_qkv.out_features) == (4, 8, 96)


class CosineAttention(nn.Module):
    """torchvision Swin V2: ``qkv_bias[length:2 * length]`` with ``length = numel() // 3``, and F.normalize."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x)
        B, N, C = t.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length:2 * length].zero_()  # no key bias
        qkv = nn.functional.linear(t, self.qkv.weight, bias).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(k, dim=-1).transpose(-2, -1)
        return self.head(self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)))


def test_a_slice_at_a_third_of_numel_and_normalize_follow_pruning():
    model, x = CosineAttention().eval(), torch.randn(2, 6, 8)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.embed, tp.prune_linear_out_channels, [1]),
                         exact=False)
    # reshape(B, N, C) ties the embedding to the heads: dim 1 of each head, in q, k and v (weight and bias)
    assert sum(sorted(idxs) == list(range(1, 96, 8)) for _, idxs in group) == 2
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.embed.out_features, model.qkv.out_features, model.proj.in_features) == (16, 48, 16)
    assert model.qkv.bias.shape == (48,) and model.heads == 4
    trains(model, x)


class HeadsTimesSize(nn.Module):
    """``reshape(B, N, 2, h * C)`` with ``h`` and ``C`` read from the shape of a per-head view (CoaT, PVT)."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(8, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.inp(x)
        B, N, D = t.shape
        _, _, h, C = t.reshape(B, N, self.heads, D // self.heads).shape
        k, v = self.kv(t).reshape(B, N, 2, h * C).unbind(2)
        return self.out(k * v + t)


def test_a_product_of_sizes_read_from_shapes_follows_pruning():
    model, x = HeadsTimesSize().eval(), torch.randn(2, 6, 8)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.inp, tp.prune_linear_out_channels, [2]))
    per_head = [2, 6, 10, 14]  # h * C keeps the heads: position 2 of each head, in k and in v
    assert [sorted(idxs) for dep, idxs in group if dep.handler == tp.prune_linear_out_channels] == \
        [per_head, per_head + [i + 16 for i in per_head]]
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.inp.out_features, model.kv.out_features, model.out.in_features) == (8, 16, 8)
    trains(model, x)


class InceptionSplit(nn.Module):
    """InceptionNeXt: ``torch.split(x, self.split_indexes)`` with the sizes kept as a tuple attribute."""

    def __init__(self, dim: int = 32, gc: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.split_indexes = (dim - 2 * gc, gc, gc)
        self.hw = nn.Conv2d(gc, gc, 3, padding=1, groups=gc)
        self.w = nn.Conv2d(gc, gc, (1, 3), padding=(0, 1), groups=gc)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        ident, hw, w = torch.split(self.stem(x), self.split_indexes, dim=1)
        return self.fc(torch.cat((ident, self.hw(hw), self.w(w)), 1).mean((2, 3)))


@pytest.fixture
def split_list_plugin():
    plugin = types.ModuleType("split_list_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        tp.SizeAttribute(m, "split_indexes") for m in model.modules() if isinstance(m, InceptionSplit)])
    hub = _plugins.get_hub()
    hub.register(plugin, "split_list_sizes")
    yield
    hub.unregister("split_list_sizes")


def test_a_split_at_a_declared_tuple_of_sizes_prunes_every_part_and_updates_the_tuple(split_list_plugin, tmp_path):
    model, x = InceptionSplit().eval(), torch.randn(2, 3, 6, 6)
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem, tp.prune_conv_out_channels, [0, 25, 30]))
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.stem.out_channels == 16 and model.split_indexes == (12, 2, 2)
    assert (model.hw.out_channels, model.w.in_channels) == (2, 2)
    expected = model(x)
    tp.save_pruned(model, str(tmp_path / "saved"))
    fresh = tp.load_pruned(InceptionSplit().eval(), str(tmp_path / "saved"))
    assert list(fresh.split_indexes) == [12, 2, 2]
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    trains(model, x)


def test_a_size_list_that_holds_something_else_is_a_plugin_error():
    module = InceptionSplit()
    module.split_indexes = (24, "4")
    with pytest.raises(tp.PluginError, match="'split_indexes' must be an int attribute .* list or tuple of ints"):
        tp.SizeAttribute(module, "split_indexes")


class PathSplit(nn.Module):
    """SKNet: ``torch.split(x, self.in_channels // self.paths)``, one part per convolution path."""

    def __init__(self, channels: int = 16, paths: int = 2) -> None:
        super().__init__()
        self.in_channels, self.paths = channels, paths
        self.convs = nn.ModuleList(nn.Conv2d(channels // paths, 8, 3, padding=1) for _ in range(paths))

    def forward(self, x):
        parts = torch.split(x, self.in_channels // self.paths, 1)
        return sum(conv(part) for conv, part in zip(self.convs, parts))


class PathNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = PathSplit()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_a_split_at_a_declared_width_divided_by_a_count_follows_pruning():
    plugin = types.ModuleType("path_split_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        tp.SizeAttribute(m, "in_channels") for m in model.modules() if isinstance(m, PathSplit)])
    hub = _plugins.get_hub()
    hub.register(plugin, "path_split_sizes")
    try:
        model, x = PathNet().eval(), torch.randn(2, 3, 6, 6)
        group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem, tp.prune_conv_out_channels, [1]))
        assert group.root_idxs == [1, 9]  # the same channel of both parts
        tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    finally:
        hub.unregister("path_split_sizes")
    assert (model.stem.out_channels, model.block.in_channels, model.block.convs[0].in_channels) == (8, 8, 4)
    trains(model, x)


class PartialAttention(nn.Module):
    """SHViT: ``torch.split(x, [self.pdim, self.dim - self.pdim])`` and ``reshape(B, self.pdim, H, W)``."""

    def __init__(self, dim: int = 16, pdim: int = 4) -> None:
        super().__init__()
        self.dim, self.pdim = dim, pdim
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.mix = nn.Conv2d(pdim, pdim, 1)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        B, _, H, W = x.shape
        a, b = torch.split(x, [self.pdim, self.dim - self.pdim], dim=1)
        a = self.mix(a).flatten(2).softmax(-1).reshape(B, self.pdim, H, W)
        return self.fc(torch.cat((a, b), 1).mean((2, 3)))


def test_a_split_at_an_attribute_and_the_rest_of_another_follows_pruning():
    plugin = types.ModuleType("partial_attention_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [tp.SizeAttribute(model, ("dim", "pdim"))])
    hub = _plugins.get_hub()
    hub.register(plugin, "partial_attention_sizes")
    try:
        model, x = PartialAttention().eval(), torch.randn(2, 3, 6, 6)
        oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem, tp.prune_conv_out_channels, [1, 9]))
        tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    finally:
        hub.unregister("partial_attention_sizes")
    assert (model.stem.out_channels, model.dim, model.pdim, model.mix.in_channels) == (8, 8, 2, 2)
    trains(model, x)


class ContextSplit(nn.Module):
    """RAFT: ``split(c, [self.hidden, c.shape[1] - self.hidden])``, the hidden part sized by an attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 6
        self.context = nn.Conv2d(3, 16, 3, padding=1)
        self.gru = nn.Conv2d(6, 4, 1)
        self.ctx = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        c = self.context(x)
        hidden, context = torch.split(c, [self.hidden, c.shape[1] - self.hidden], dim=1)
        return (self.gru(hidden) + self.ctx(context)).mean((2, 3))


def test_a_split_at_an_attribute_and_the_rest_of_a_shape_follows_pruning():
    plugin = types.ModuleType("context_split_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [tp.SizeAttribute(model, "hidden")])
    hub = _plugins.get_hub()
    hub.register(plugin, "context_split_sizes")
    try:
        model, x = ContextSplit().eval(), torch.randn(2, 3, 6, 6)
        group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.context, tp.prune_conv_out_channels,
                                                                          [1, 9]))
        assert sorted(sorted(i) for d, i in group if d.handler == tp.prune_conv_in_channels) == [[1], [3]]
        tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    finally:
        hub.unregister("context_split_sizes")
    assert (model.context.out_channels, model.hidden, model.gru.in_channels, model.ctx.in_channels) == (8, 3, 3, 5)
    trains(model, x)


class RawExperts(nn.Module):
    """Fused experts (transformers' MoE blocks): raw weights, a width that sizes a reshape, and sizes the
    forward never shapes anything with."""

    def __init__(self, hidden: int = 8, inner: int = 6, experts: int = 3) -> None:
        super().__init__()
        self.hidden_dim, self.intermediate_dim, self.num_experts = hidden, inner, experts
        self.up = nn.Parameter(torch.randn(experts, inner, hidden) * 0.3)
        self.down = nn.Parameter(torch.randn(experts, hidden, inner) * 0.3)

    def forward(self, x):
        tokens = x.reshape(-1, self.hidden_dim)
        out = torch.zeros_like(tokens)
        for expert in range(self.up.shape[0]):
            out = out + F.linear(F.linear(tokens, self.up[expert]).relu(), self.down[expert])
        return out.reshape(x.shape)


class ExpertsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.experts, self.head = nn.Linear(5, 8), RawExperts(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.experts(self.embed(x)))


def test_declared_sizes_the_forward_never_shapes_with_follow_their_modules_weights():
    plugin = types.ModuleType("raw_expert_sizes")
    plugin.collect_structure_hints = tp.hookimpl(lambda model: [
        tp.SizeAttribute(m, ("hidden_dim", "intermediate_dim", "num_experts")) for m in model.modules()
        if isinstance(m, RawExperts)])
    hub = _plugins.get_hub()
    hub.register(plugin, "raw_expert_sizes")
    try:
        model, x = ExpertsModel().eval(), torch.randn(2, 4, 5)
        oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.embed, tp.prune_linear_out_channels, [1, 6]))
        tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    finally:
        hub.unregister("raw_expert_sizes")
    experts = model.experts
    assert experts.up.shape == (3, 3, 4) and experts.down.shape == (3, 4, 3)
    # hidden_dim sized the reshape; intermediate_dim was never used, and takes its weights' new size
    assert (experts.hidden_dim, experts.intermediate_dim, experts.num_experts) == (4, 3, 3)
    trains(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_v2_t", "raft_small"])
def test_torchvision_models_sized_in_python_prune_to_about_a_quarter(name):
    """Swin V2's qkv bias slice and RAFT's context split kept 66-69% of the parameters at ratio 0.5."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if name == "raft_small":
        model, x = torchvision.models.get_model(name).eval(), (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
        call = lambda m: m(*x)[-1]  # noqa: E731 - the last flow estimate
    else:
        model = torchvision.models.get_model(name, num_classes=10).eval()
        x = torch.randn(1, 3, 128, 128)
        call = lambda m: m(x)  # noqa: E731
    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        shape = call(model).shape
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert sum(p.numel() for p in model.parameters()) < 0.4 * before
    with torch.no_grad():
        assert call(model).shape == shape


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNetV2: sizes read with ``x.size()``, the channels regrouped in another order."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.branch2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        for branch in (self.branch, self.branch2):
            keep, work = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat((keep, branch(work)), 1), 2)
        return self.fc(x.mean((2, 3)))


def test_a_channel_shuffle_sized_from_its_input_stays_a_shuffle():
    # The view back measures C before the shuffle; tying it to the shuffled channels paired channels
    # the shuffle moved, and the chunk after it could no longer be related (ShuffleNetV2 kept 52%).
    model, x = ShuffleNet().eval(), torch.randn(2, 3, 6, 6)
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.branch, tp.prune_conv_out_channels, [1]))
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert not [n for notes in DG.frozen_reasons().values() for n in notes if "could not be related" in n]
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.stem.out_channels, model.branch.out_channels, model.branch2.out_channels) == (8, 4, 4)
    trains(model, x)


class Maxout(nn.Module):
    """Channels taken in pairs and reduced to their maximum, with the pair count left to ``-1``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(8, 6, 1)
        self.unflatten = nn.Unflatten(1, (-1, 2))

    def forward(self, x):
        y = self.stem(x)
        if self.how == "method":
            y = y.unflatten(1, (-1, 2))
        elif self.how == "function":
            y = torch.unflatten(y, -3, [-1, 2])
        elif self.how == "module":
            y = self.unflatten(y)
        else:
            y = y.view(y.shape[0], -1, 2, *y.shape[2:])
        return self.conv(y.amax(2))


@pytest.mark.parametrize("how", ["method", "function", "module", "view"])
def test_an_unflatten_with_an_inferred_size_follows_pruning_as_the_same_view_does(how):
    # aten sees unflatten's sizes with the -1 already worked out; a -1 follows pruning in a view.
    model, x = Maxout(how).eval(), torch.randn(2, 3, 5, 5)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.stem, tp.prune_conv_out_channels, [4]))
    assert [sorted(idxs) for dep, idxs in group] == [[4, 5], [2]]  # a whole pair, and the input it feeds
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.stem.out_channels, model.conv.in_channels) == (8, 4)
    trains(model, x)


def test_an_unflatten_at_constant_sizes_stays_as_written():
    class Pairs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.conv = nn.Conv2d(8, 6, 1)

        def forward(self, x):
            return self.conv(self.stem(x).unflatten(1, (8, 2)).amax(2))

    model, x = Pairs().eval(), torch.randn(2, 3, 5, 5)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert not list(DG.get_all_groups())
    assert any("size written in code" in note for note in DG.frozen_reasons()["stem [out]"])


class HandWrittenLayerNorm(nn.Module):
    """The LayerNorm of ConvNeXt's reference code: ``F.layer_norm`` with a ``normalized_shape`` tuple it keeps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.bias = nn.Parameter(torch.randn(dim))
        self.normalized_shape = (dim,)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, 1e-6)


class ChannelsLastBlock(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = HandWrittenLayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        x = x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_a_hand_written_layer_norm_prunes_with_its_channels_and_keeps_its_shape_attribute_in_step(tmp_path):
    # aten sees normalized_shape as plain numbers; the module keeps them, so they are written back.
    model, x = ChannelsLastBlock().eval(), torch.randn(2, 3, 6, 6)
    DG = tp.DependencyGraph().build_dependency(model, x, validate=False)
    group = DG.get_pruning_group(model.stem, tp.prune_conv_out_channels, idxs=[2, 7])
    assert any(dep.target.owner is model.norm for dep, _ in group)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.stem.out_channels, model.norm.weight.shape, model.norm.normalized_shape) == \
        (8, torch.Size([8]), (8,))
    trains(model.eval(), x)
    tp.save_pruned(model.eval(), tmp_path / "m.pt")
    loaded = tp.load_pruned(ChannelsLastBlock().eval(), tmp_path / "m.pt")
    assert loaded.norm.normalized_shape == (8,)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class SplitAtAttribute(nn.Module):
    """nanoGPT's attention: ``self.c_attn(x).split(self.n_embd, dim=2)``, heads viewed from ``C = x.size(-1)``."""

    def __init__(self, n_embd: int = 16, n_head: int = 4) -> None:
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = SplitAtAttribute()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x)
        return self.head(x + self.attn(x))


def test_a_split_at_the_one_attribute_holding_its_size_follows_pruning_and_sets_it():
    # split(x, self.n_embd) passes a plain number; the running module's only int attribute of that value is it
    model, x = TinyGPT().eval(), torch.randn(2, 6, 8)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.embed.out_features, model.attn.c_attn.out_features, model.attn.n_embd) == (8, 24, 8)
    trains(model, x)
    twin = TinyGPT().eval()
    twin.attn.other = 16  # a second attribute of that value: which one sizes the split is not known
    tp.pruner.BasePruner(twin, x, importance="l2", pruning_ratio=0.5).step()
    assert (twin.embed.out_features, twin.attn.n_embd, twin.attn.other) == (16, 16, 16)


class TwoSplitsOneAttribute(nn.Module):
    """One attribute sizes the splits of two unrelated layers: after pruning both must still match it."""

    def __init__(self) -> None:
        super().__init__()
        self.half = 8
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
        self.head_a, self.head_b = nn.Linear(8, 5), nn.Linear(8, 5)

    def forward(self, x):
        a1, a2 = self.a(x).split(self.half, 1)
        b1, b2 = self.b(x).split(self.half, 1)
        return self.head_a(torch.maximum(a1, a2).mean((2, 3))) + self.head_b(torch.maximum(b1, b2).mean((2, 3)))


def test_an_attribute_that_sizes_two_splits_prunes_them_together():
    model, x = TwoSplitsOneAttribute().eval(), torch.randn(2, 3, 4, 4)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.a, tp.prune_conv_out_channels, [1, 9]))
    assert sorted(idxs for dep, idxs in group if dep.target.qualname == "b" and dep.handler == tp.prune_conv_out_channels) \
        == [[1, 9]]  # the same position in b: one size for both
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert (model.a.out_channels, model.b.out_channels, model.half) == (8, 8, 4)
    trains(model, x)
