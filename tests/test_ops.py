"""Every supported tensor operator, between a producer layer and a consumer layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
from pruning_core.testing.oracle import idxs_of, oracle_check


class OpNet(nn.Module):
    """conv producer (8 channels) -> op -> 1x1 conv consumer."""

    def __init__(self, op, consumer_in=8, producer_out=8):
        super().__init__()
        self.producer = nn.Conv2d(3, producer_out, 1)
        self.op = op
        self.consumer = nn.Conv2d(consumer_in, 4, 1)

    def forward(self, x):
        return self.consumer(self.op(self.producer(x)))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def producer_group(idxs):
    return lambda DG, m: DG.get_pruning_group(m.producer, tp.prune_conv_out_channels, idxs=idxs)


X = torch.randn(2, 3, 6, 6)

EXACT_OPS = {
    "relu": lambda x: F.relu(x),
    "inplace_relu": lambda x: x.relu_(),
    "hardswish": lambda x: F.hardswish(x),
    "arith": lambda x: (x * 2 + 1) / 3 - x.sigmoid(),
    "residual_add": lambda x: x + x.tanh(),
    "permute_roundtrip": lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
    "transpose_roundtrip": lambda x: x.transpose(1, 3).transpose(1, 3),
    "flatten_unflatten": lambda x: x.flatten(2).unflatten(2, (6, 6)),
    "view_reshape": lambda x: x.reshape(2, -1, 36).view(2, -1, 6, 6),
    "max_pool": lambda x: F.max_pool2d(x, 2),
    "avg_pool": lambda x: F.avg_pool2d(x, 3, stride=1, padding=1),
    "adaptive_pool": lambda x: F.adaptive_avg_pool2d(x, 3),
    "interpolate": lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear"),
    "spatial_slice": lambda x: x[:, :, 1:, ::2],
    "spatial_pad": lambda x: F.pad(x, (1, 1, 2, 0)),
    "sum_spatial": lambda x: x.sum(dim=(2, 3), keepdim=True).expand(-1, -1, 6, 6),
    "amax_spatial": lambda x: x.amax(dim=-1, keepdim=True) + x,
    "softmax_spatial": lambda x: x.flatten(2).softmax(-1).view_as(x),
    "cumsum_spatial": lambda x: x.cumsum(dim=2),
    "expand_broadcast": lambda x: x * torch.ones(1, 1, 6, 6),
    "roll_spatial": lambda x: torch.roll(x, 1, dims=3),
    "stack_mean": lambda x: torch.stack([x, x.relu()], dim=0).mean(0),
    "dropout_eval": lambda x: F.dropout(x, 0.5, training=False),
    "index_add_spatial": lambda x: torch.zeros_like(x).index_add(3, torch.tensor([0, 2, 4]), x[..., :3]) + x,
    "index_copy_spatial": lambda x: x.clone().index_copy(2, torch.tensor([5, 1]), x[:, :, :2].relu()),
    "index_fill_spatial": lambda x: x.index_fill(3, torch.tensor([0]), 0.0),
}


@pytest.mark.parametrize("name", sorted(EXACT_OPS))
def test_channel_preserving_ops(name):
    model = OpNet(Lambda(EXACT_OPS[name])).eval()
    group = oracle_check(model, X, producer_group([1, 5]))
    assert idxs_of(group, "consumer") == [[1, 5]]


def test_cat_offsets_the_second_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.consumer = nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.consumer(torch.cat([self.a(x), self.b(x)], dim=1))

    model = Net()
    group = oracle_check(model, X, lambda DG, m: DG.get_pruning_group(m.b, tp.prune_conv_out_channels, idxs=[0, 5]))
    assert idxs_of(group, "consumer") == [[4, 9]]


def test_chunk_couples_the_halves_and_split_at_constant_offsets_is_frozen():
    chunked = OpNet(Lambda(lambda x: sum(x.chunk(2, dim=1))), consumer_in=4)
    group = oracle_check(chunked, X, producer_group([1]))
    assert group.root_idxs == [1, 5]  # channel 1 of each half
    uneven = OpNet(Lambda(lambda x: torch.split(x, [3, 5], dim=1)[1]), consumer_in=5)
    DG = tp.DependencyGraph().build_dependency(uneven, X)
    with pytest.raises(tp.GraphError, match="constant offsets"):
        DG.get_pruning_group(uneven.producer, tp.prune_conv_out_channels, idxs=[4])
    assert list(DG.get_all_groups()) == []


def test_view_inferred_size_follows_pruning_of_its_dim():
    # ``-1`` is what the other sizes leave of one dim, so it follows pruning (no hint needed).
    model = OpNet(Lambda(lambda x: sum(x.view(2, 2, -1, 6, 6).unbind(1))), consumer_in=4)
    group = oracle_check(model, X, producer_group([3]))
    assert group.root_idxs == [3, 7]  # position 3 inside each of the two unbound halves
    spanning = OpNet(Lambda(lambda x: x.reshape(-1, 4, 6, 6)[:2]), consumer_in=4)  # -1 takes in the batch
    DG = tp.DependencyGraph().build_dependency(spanning, X)
    with pytest.raises(tp.GraphError, match="size written in code"):
        DG.get_pruning_group(spanning.producer, tp.prune_conv_out_channels, idxs=[3])


def test_view_split_is_structured_until_a_hint_unlocks_it():
    # int() makes a plain number of a measured size: written in code, as far as the tracer can tell
    op = Lambda(lambda x: sum(x.unflatten(1, (2, int(x.shape[1] // 2))).unbind(1)))
    model = OpNet(op, consumer_in=4)
    DG = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.GraphError, match="size written in code"):
        DG.get_pruning_group(model.producer, tp.prune_conv_out_channels, idxs=[3])

    def unlocked(DG, m):
        assert DG.set_channel_structure(m.producer, groups=2, prunable_groups=False, prunable_within=True)
        return DG.get_pruning_group(m.producer, tp.prune_conv_out_channels, idxs=[3])

    group = oracle_check(model, X, unlocked)
    assert group.root_idxs == [3, 7]  # position 3 inside each of the two unbound halves


def test_channel_slice_is_not_pruned_silently():
    model = OpNet(Lambda(lambda x: x[:, :5]), consumer_in=5)
    DG = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.GraphError, match="constant offsets"):
        DG.get_pruning_group(model.producer, tp.prune_conv_out_channels, idxs=[0])


@pytest.mark.parametrize("bounds, width", [((None, 2), 2), ((2, None), 6), ((-2, None), 2), ((None, -2), 6)])
def test_a_constant_slice_on_group_boundaries_keeps_the_channels_it_counts(bounds, width):
    """After a GroupNorm of 4 groups of 2, a constant cut at 2 or 6 falls between groups and makes no new
    channel set, but the constant still counts the channels within each group: pruning one of them would
    make the slice read other channels (a random architecture pruned ``x[:, :2]`` to 1 channel read as 2)."""
    op = nn.Sequential(nn.GroupNorm(4, 8), Lambda(lambda x: x[:, slice(*bounds)]))
    model = OpNet(op, consumer_in=width)
    DG = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.GraphError, match="cannot be pruned"):
        DG.get_pruning_group(model.producer, tp.prune_conv_out_channels, idxs=[1])
    tp.pruner.BasePruner(model, X, importance="l2", pruning_ratio=0.5).step()
    assert model.producer.out_channels == 8 and model(X).shape == (2, 4, 6, 6)


class ConstantSplits(nn.Module):
    """``split`` at constant sizes: equal halves (YOLOv8's ``split((self.c, self.c), 1)``) or a cut on the
    boundary of two joined producers."""

    def __init__(self, equal: bool):
        super().__init__()
        self.equal = equal
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4 if equal else 6, 1)
        self.mix, self.consumer = nn.Conv2d(4, 4, 1), nn.Conv2d(8 if equal else 10, 2, 1)

    def forward(self, x):
        joined = torch.cat([self.a(x), self.b(x)], dim=1)
        first, rest = joined.split((4, 4) if self.equal else [4, 6], dim=1)
        return self.consumer(torch.cat([self.mix(first), rest], dim=1))


@pytest.mark.parametrize("equal", [True, False])
def test_a_split_at_constant_sizes_keeps_the_channels_it_counts(equal):
    """Constant sizes count every part's channels, even where the parts are existing pieces (a cat's
    producers, or equal halves); the graph alone (no trial pass) must keep them."""
    model = ConstantSplits(equal)
    DG = tp.DependencyGraph().build_dependency(model, X, validate=False)
    for producer in (model.a, model.b):
        with pytest.raises(tp.GraphError, match="constant"):
            DG.get_pruning_group(producer, tp.prune_conv_out_channels, idxs=[1])
    oracle_check(model, X, lambda DG, m: DG.get_pruning_group(m.mix, tp.prune_conv_out_channels, idxs=[1]))


@pytest.mark.parametrize("written", [True, False])
def test_a_split_at_one_constant_size_is_kept_where_chunk_is_pruned(written):
    """``split(x, 4)`` counts 4 channels per part; ``chunk(2)`` reaches aten as the same split, but its
    size follows the channels. The graph alone (no trial pass) must tell them apart."""
    halves = (lambda x: torch.split(x, 4, dim=1)) if written else (lambda x: x.chunk(2, dim=1))
    model = OpNet(Lambda(lambda x: torch.maximum(*halves(x))), consumer_in=4)
    DG = tp.DependencyGraph().build_dependency(model, X, validate=False)
    if written:
        with pytest.raises(tp.GraphError, match="split at constant sizes"):
            DG.get_pruning_group(model.producer, tp.prune_conv_out_channels, idxs=[1])
        assert list(DG.get_all_groups()) == []
    else:
        assert oracle_check(model, X, producer_group([1])).root_idxs == [1, 5]


@pytest.mark.parametrize("cut", [8, 3])
def test_an_empty_slice_joined_back_keeps_the_channels_prunable(cut):
    """Phi-3's partial rotary with rotary_dim == head_dim: ``x[:, n:]`` is empty, then concatenated back."""
    model = OpNet(Lambda(lambda x: torch.cat([x[:, :8] * 2, x[:, 8:], x[:, cut:cut]], dim=1)))
    group = oracle_check(model, X, producer_group([1, 6]))
    assert idxs_of(group, "consumer") == [[1, 6]]


def test_flatten_into_linear_maps_a_channel_to_its_spatial_block():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.producer = nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(8 * 3 * 3, 5)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.producer(x), 3), 1))

    model = Net()
    group = oracle_check(model, X, producer_group([2]))
    assert idxs_of(group, "fc") == [list(range(18, 27))]
    DG = tp.DependencyGraph().build_dependency(model, X)
    # Asking for one input position of the linear layer removes its whole channel.
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, idxs=[20])
    assert group.root_idxs == list(range(18, 27))


@pytest.mark.parametrize("shuffle", ["view_transpose_view", "module"])
def test_channel_shuffle_is_pruned_not_refused(shuffle):
    if shuffle == "module":
        op = nn.ChannelShuffle(2)
    else:
        op = Lambda(lambda x: x.view(2, 2, -1, 6, 6).transpose(1, 2).flatten(1, 2))
    model = OpNet(op).eval()
    group = oracle_check(model, X, producer_group([1]))
    # Channel 1 of group-local index: positions 1 and 5 before the shuffle, 2 and 3 after it.
    assert group.root_idxs == [1, 5]
    assert idxs_of(group, "consumer") == [[2, 3]]


def test_pixel_shuffle_removes_whole_upscaled_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.producer = nn.Conv2d(3, 16, 1)
            self.consumer = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.consumer(F.pixel_shuffle(self.producer(x), 2))

    model = Net()
    group = oracle_check(model, X, producer_group([5]))
    assert group.root_idxs == [4, 5, 6, 7]
    assert idxs_of(group, "consumer") == [[1]]


def test_pixel_unshuffle_spreads_a_channel_over_four():
    model = OpNet(Lambda(lambda x: F.pixel_unshuffle(x, 2)), consumer_in=32)
    group = oracle_check(model, X, producer_group([2]))
    assert idxs_of(group, "consumer") == [[8, 9, 10, 11]]


def test_matmul_with_a_raw_weight_and_reductions():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.producer = nn.Linear(5, 8)
            self.mix = nn.Parameter(torch.randn(8, 6))
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            h = self.producer(x)
            y = torch.matmul(h, self.mix)
            y = y + torch.einsum("btc,cd->btd", h, self.mix)
            return self.head(y.mean(dim=1))

    model = Net()
    x = torch.randn(2, 4, 5)
    group = oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.producer, tp.prune_linear_out_channels,
                                                                       idxs=[0, 7]))
    assert idxs_of(group, "mix") == [[0, 7]]
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.head, tp.prune_linear_in_channels, idxs=[1]).prune()
    assert model.mix.shape == (8, 5) and model.head.in_features == 5


def test_attention_scores_couple_query_and_key_heads():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.o = nn.Linear(8, 8)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, 2, 4).transpose(1, 2)
            k = self.k(x).view(b, t, 2, 4).transpose(1, 2)
            v = self.v(x).view(b, t, 2, 4).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v)
            return self.o(a.transpose(1, 2).reshape(b, t, 8)) + x

    model = Attn().eval()
    x = torch.randn(2, 5, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    # Head structure comes from the view: q/k/v outputs are 2 heads x 4 dims, kept whole by default.
    in_slot, out_slot = DG.module_slots(model.q)
    assert repr(out_slot.resolved()).count("*") == 1
    with pytest.raises(tp.GraphError):
        DG.get_pruning_group(model.q, tp.prune_linear_out_channels, idxs=[0])
    assert DG.set_channel_structure(model.q, groups=2, prunable_groups=True, prunable_within=False)
    group = DG.get_pruning_group(model.q, tp.prune_linear_out_channels, idxs=[0, 1, 2, 3])
    members = {item.dep.target.module for item in group}
    assert {model.q, model.k, model.v, model.o} <= members
    group.prune()
    assert model.q.out_features == 4 and model.o.in_features == 4
    # The model's own view(b, t, 2, 4) still says 2 heads, so it cannot run unless a plugin fixes it;
    # what matters here is that every projection lost the same head.
    assert model.k.out_features == model.v.out_features == 4


class Experts(nn.Module):
    """Fused experts as transformers 5 runs them: 3-D weights, tokens sorted by expert, torch._grouped_mm."""

    def __init__(self):
        super().__init__()
        self.producer = nn.Linear(6, 12)
        self.up = nn.Parameter(torch.randn(3, 16, 12))  # (experts, intermediate, hidden)
        self.down = nn.Parameter(torch.randn(3, 12, 16))  # (experts, hidden, intermediate)
        self.consumer = nn.Linear(12, 4)

    def forward(self, x):
        h = self.producer(x)
        offs = torch.tensor([2, 4, 6], dtype=torch.int32)  # tokens 0-1 to expert 0, 2-3 to 1, 4-5 to 2
        inner = torch.relu(torch._grouped_mm(h, self.up.transpose(1, 2), offs=offs))
        return self.consumer(torch._grouped_mm(inner, self.down.transpose(1, 2), offs=offs))


def test_grouped_matrix_products_of_fused_experts_prune_every_expert_alike():
    torch.manual_seed(0)
    model, x = Experts(), torch.randn(6, 6)
    reference = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(model, x, pruning_ratio=0.3, ignored_layers=[model.consumer])
    pruner.step()
    # The kernel needs rows of 16 bytes: float32 widths stay multiples of 4 (16 * 0.7 -> 12, 12 * 0.7 -> 8).
    assert model.up.shape == (3, 12, 8) and model.down.shape == (3, 8, 12)
    assert model.producer.out_features == 8 and model.consumer.in_features == 8
    # Oracle: the pruned model computes what the original computes with the removed channels zeroed.
    kept_hidden = [i for i in range(12) if any(torch.equal(reference.producer.weight[i], model.producer.weight[j])
                                               for j in range(8))]
    kept_inner = [i for i in range(16) if any(torch.equal(reference.up[:, i, kept_hidden], model.up[:, j])
                                              for j in range(12))]
    kept_out = [i for i in range(12) if any(torch.equal(reference.consumer.weight[:, i], model.consumer.weight[:, j])
                                            for j in range(8))]
    assert len(kept_hidden) == 8 and len(kept_inner) == 12 and len(kept_out) == 8
    with torch.no_grad():
        for i in set(range(16)) - set(kept_inner):
            reference.up[:, i] = 0
        for i in set(range(12)) - set(kept_hidden):
            reference.producer.weight[i] = 0
            reference.producer.bias[i] = 0
        for i in set(range(12)) - set(kept_out):  # the experts' output channels are a group of their own
            reference.down[:, i] = 0
        torch.testing.assert_close(model(x), reference(x))


class Joined(nn.Module):
    """Two producers joined on the channel dim, then rows picked by an index tensor and the rest sliced off."""

    def __init__(self, picked, rest):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 2, 1)
        self.picked, self.rest = picked, rest
        self.consumer = nn.Conv2d(6 + len(picked), 2, 1)

    def forward(self, x):
        joined = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.consumer(torch.cat([joined[:, self.rest], joined[:, self.picked]], dim=1))


@pytest.mark.parametrize("picked, kept_whole", [([-2, -1], "b"), ([0, 1], "a"), ([-1, 0], "both")])
def test_constant_indices_freeze_only_the_pieces_they_read(picked, kept_whole):
    """``x[:, [-2]]`` reads the same rows after the pieces before them shrink (multi-query attention's key
    row after the query heads): only the indexed end pieces are frozen; mixed signs freeze everything."""
    rest = slice(None, -2) if picked[0] < 0 else slice(2, None)  # the other rows, counted from the same end
    model = Joined(picked, rest).eval()
    free = {"b": "a", "a": "b"}.get(kept_whole)
    DG = tp.DependencyGraph().build_dependency(model, X)
    for name in ("a", "b"):
        producer = getattr(model, name)
        if name == free:
            group = oracle_check(model, X, lambda DG, m: DG.get_pruning_group(getattr(m, name),
                                                                            tp.prune_conv_out_channels, idxs=[1]))
            assert group.root_idxs == [1]
        else:
            with pytest.raises(tp.GraphError):
                DG.get_pruning_group(producer, tp.prune_conv_out_channels, idxs=[1])


class FusedGQA(nn.Module):
    """One projection ``[q: 4 heads | k: 2 heads | v: 2 heads]`` of size 3, cut by slices (Phi-3's layout)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(6, 24), nn.Linear(12, 6)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x)
        q, k, v = (qkv[..., :12].view(b, t, 2, 2, 3), qkv[..., 12:18].view(b, t, 2, 1, 3),
                   qkv[..., 18:].view(b, t, 2, 1, 3))
        scores = torch.einsum("btgqd,bsgkd->bgqts", q, k).softmax(-1)
        out = torch.einsum("bgqts,bsgkd->btgqd", scores, v)
        return self.o(out.reshape(b, t, 12)) + x


def test_fused_projection_with_fewer_key_value_heads_prunes_whole_groups():
    """Parts of unequal size: a removable head is a key/value group (its two queries, key and value)."""
    model = FusedGQA().eval()
    x = torch.randn(2, 5, 6)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert DG.channel_parts("qkv") == [[2, 2, 3], [2, 3], [2, 3]]
    assert DG.set_channel_structure(model.qkv, groups=2, prunable_groups=True, prunable_within=False,
                                    group_size=12)

    # The toy's slices and views are constants (a plugin's layout updates the real attributes): no trial run.
    group = DG.get_pruning_group(model.o, tp.prune_linear_in_channels, idxs=list(range(6, 12)))
    assert idxs_of(group, "qkv") == [list(range(6, 12)) + [15, 16, 17, 21, 22, 23]]
