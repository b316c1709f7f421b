"""Every supported layer type, pruned through the graph and checked against the zero-contribution oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.testing import check_handler
from pruning_core.testing.oracle import oracle_check, run


class Chain(nn.Module):
    """producer -> middle -> consumer, with optional input reshaping."""

    def __init__(self, producer, middle, consumer, between=None):
        super().__init__()
        self.producer, self.middle, self.consumer = producer, middle, consumer
        self.between = between

    def forward(self, x):
        y = self.producer(x)
        y = self.middle(y)
        if isinstance(y, tuple):
            y = y[0]
        if self.between is not None:
            y = self.between(y)
        return self.consumer(y)


def out_group(idxs):
    def choose(DG, model):
        return DG.get_pruning_group(model.producer, tp.prune_conv_out_channels if isinstance(
            model.producer, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels, idxs=idxs)
    return choose


CONV_CASES = [
    ("conv1d", lambda: Chain(nn.Conv1d(3, 8, 3), nn.Conv1d(8, 6, 3), nn.Conv1d(6, 4, 1)), (2, 3, 12)),
    ("conv2d", lambda: Chain(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), nn.Conv2d(6, 4, 1)), (2, 3, 10, 10)),
    ("conv3d", lambda: Chain(nn.Conv3d(3, 8, 3), nn.Conv3d(8, 6, 3), nn.Conv3d(6, 4, 1)), (2, 3, 7, 7, 7)),
    ("conv_transpose1d", lambda: Chain(nn.Conv1d(3, 8, 3), nn.ConvTranspose1d(8, 6, 2, stride=2),
                                       nn.Conv1d(6, 4, 1)), (2, 3, 9)),
    ("conv_transpose2d", lambda: Chain(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 6, 2, stride=2),
                                       nn.Conv2d(6, 4, 1)), (2, 3, 8, 8)),
    ("conv_transpose3d", lambda: Chain(nn.Conv3d(3, 8, 3), nn.ConvTranspose3d(8, 6, 2, stride=2),
                                       nn.Conv3d(6, 4, 1)), (2, 3, 5, 5, 5)),
    ("depthwise", lambda: Chain(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                nn.Conv2d(8, 4, 1)), (2, 3, 6, 6)),
    ("depthwise_multiplier", lambda: Chain(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 12, 3, padding=1, groups=6),
                                           nn.Conv2d(12, 4, 1)), (2, 3, 6, 6)),
    ("batchnorm1d", lambda: Chain(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), (4, 5)),
    ("batchnorm2d", lambda: Chain(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)), (2, 3, 5, 5)),
    ("batchnorm3d", lambda: Chain(nn.Conv3d(3, 8, 1), nn.BatchNorm3d(8), nn.Conv3d(8, 4, 1)), (2, 3, 4, 4, 4)),
    ("instancenorm2d", lambda: Chain(nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                                     nn.Conv2d(8, 4, 1)), (2, 3, 5, 5)),
    ("prelu", lambda: Chain(nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 4, 1)), (2, 3, 5, 5)),
    ("prelu_shared", lambda: Chain(nn.Conv2d(3, 8, 1), nn.PReLU(), nn.Conv2d(8, 4, 1)), (2, 3, 5, 5)),
    ("linear", lambda: Chain(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), (4, 5)),
    ("linear_3d_input", lambda: Chain(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3)), (2, 7, 5)),
]


def _set_stats(model):
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) \
                and m.running_mean is not None:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("name,factory,shape", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_layer_prunes_exactly(name, factory, shape):
    model = _set_stats(factory())
    x = torch.randn(*shape)
    idxs = [1, 4, 5] if name != "depthwise_multiplier" else [1, 4]
    group = oracle_check(model, x, out_group(idxs))
    assert group.root_idxs == idxs


def test_grouped_conv_keeps_groups_equal():
    model = _set_stats(Chain(nn.Conv2d(3, 12, 1), nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.Conv2d(12, 4, 1)))
    x = torch.randn(2, 3, 6, 6)
    # Removing channel 1 of a 3-group conv input removes position 1 in every group: 1, 5, 9.
    group = oracle_check(model, x, out_group([1]))
    assert group.root_idxs == [1, 5, 9]
    assert tp.DependencyGraph  # the pruned model above was checked; check the layer sizes on a fresh one
    fresh = _set_stats(Chain(nn.Conv2d(3, 12, 1), nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.Conv2d(12, 4, 1)))
    DG = tp.DependencyGraph().build_dependency(fresh, x)
    DG.get_pruning_group(fresh.producer, tp.prune_conv_out_channels, idxs=[1]).prune()
    assert (fresh.middle.in_channels, fresh.middle.groups, fresh.middle.weight.shape[1]) == (9, 3, 3)
    assert run(fresh, x).shape == (2, 4, 6, 6)


@pytest.mark.parametrize("norm", [nn.LayerNorm(8), nn.RMSNorm(8), nn.GroupNorm(2, 8)], ids=["ln", "rms", "gn"])
def test_channel_mixing_norms_prune_and_run(norm):
    if isinstance(norm, nn.GroupNorm):
        model = Chain(nn.Conv2d(3, 8, 1), norm, nn.Conv2d(8, 4, 1))
        x = torch.randn(2, 3, 5, 5)
    else:
        model = Chain(nn.Linear(5, 8), norm, nn.Linear(8, 3))
        x = torch.randn(2, 4, 5)
    group = oracle_check(model.eval(), x, out_group([0, 3]), exact=False)
    assert len(group) >= 3
    pruned = Chain(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    DG = tp.DependencyGraph().build_dependency(pruned, torch.randn(2, 5))
    DG.get_pruning_group(pruned.producer, tp.prune_linear_out_channels, idxs=[0, 3]).prune()
    assert pruned.middle.normalized_shape == (6,) and pruned.middle.weight.shape == (6,)


def test_groupnorm_pruning_removes_the_same_positions_in_each_group():
    model = Chain(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(model.producer, tp.prune_conv_out_channels, idxs=[1])
    assert group.root_idxs == [1, 5]
    group.prune()
    assert model.middle.num_channels == 6 and model.middle.num_groups == 2
    assert run(model, x).shape == (2, 4, 5, 5)


def test_embedding_output_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.embed(ids).relu())

    model = Net()
    ids = torch.randint(0, 20, (2, 5))

    def choose(DG, m):
        return DG.get_pruning_group(m.embed, tp.prune_embedding_out_channels, idxs=[0, 2])

    oracle_check(model, ids, choose)
    DG = tp.DependencyGraph().build_dependency(model, ids)
    choose(DG, model).prune()
    assert model.embed.embedding_dim == 6 and model.fc.in_features == 6
    with pytest.raises(tp.GraphError, match="not prunable|cannot be pruned"):
        DG.get_pruning_group(model.embed, tp.prune_embedding_in_channels, idxs=[3])


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_keeps_heads_whole(batch_first):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            a, _ = self.attn(h, h, h)
            return self.out(a + h)

    model = Net().eval()
    x = torch.randn(2, 4, 5)
    DG = tp.DependencyGraph().build_dependency(model, x)
    # Channel 1 of the 8-dim embedding is position 1 of head 0; the graph removes it in both heads.
    group = DG.get_pruning_group(model.inp, tp.prune_linear_out_channels, idxs=[1])
    assert group.root_idxs == [1, 5]
    assert any(item.dep.handler == tp.prune_multihead_attention_out_channels for item in group)
    group.prune()
    assert (model.attn.embed_dim, model.attn.head_dim, model.attn.num_heads) == (6, 3, 2)
    assert model.attn.in_proj_weight.shape == (18, 6) and model.attn.out_proj.weight.shape == (6, 6)
    assert run(model, x).shape == (2, 4, 3)


class KeyValueWidths(nn.Module):
    """MultiheadAttention whose key input is 8 wide like the embedding and whose value input is 4 wide."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(5, 4)
        self.attn = nn.MultiheadAttention(8, 2, kdim=8, vdim=4, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.attn(self.q(x), self.k(x), self.v(x), need_weights=False)[0])


def test_multihead_attention_prunes_a_key_input_as_wide_as_the_embedding_and_keeps_a_narrower_value():
    attn = nn.MultiheadAttention(8, 2, kdim=8, vdim=4, batch_first=True)
    tp.prune_multihead_attention_out_channels(attn, [0, 4])  # the low-level function: key columns go too
    assert (attn.kdim, attn.vdim) == (6, 4) and attn.k_proj_weight.shape == (6, 6) and attn.v_proj_weight.shape == (6, 4)
    assert attn(torch.randn(1, 3, 6), torch.randn(1, 3, 6), torch.randn(1, 3, 4))[0].shape == (1, 3, 6)
    model, x = KeyValueWidths().eval(), torch.randn(2, 4, 5)
    DG = tp.DependencyGraph().build_dependency(model, x, validate=False)  # the graph alone must be right
    assert {type(g[0].dep.target.module).__name__ for g in DG.get_all_groups()} == {"Linear"}
    roots = {g[0].dep.target.module for g in DG.get_all_groups()}
    assert model.v not in roots  # the value input is read at vdim=4 whatever the embedding
    # kdim == embed_dim ties the key input to the heads (no zeroing oracle: the head size sets the softmax scale)
    group = DG.get_pruning_group(model.k, tp.prune_linear_out_channels, idxs=[1])
    assert group.root_idxs == [1, 5]
    group.prune()
    assert (model.q.out_features, model.k.out_features, model.v.out_features, model.attn.kdim) == (6, 6, 4, 6)
    assert run(model, x).shape == (2, 4, 3)


def test_a_projected_lstm_keeps_its_input_channels():
    """``proj_size`` LSTMs are not pruned, so the channels they read are kept (the graph alone must say so)."""
    model = nn.Sequential(nn.Linear(5, 6), nn.LSTM(6, 8, batch_first=True, proj_size=4)).eval()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4, 5), validate=False)
    assert list(DG.get_all_groups()) == []
    with pytest.raises(tp.GraphError, match="does not prune"):
        DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1])


@pytest.mark.parametrize("rnn", ["lstm", "gru", "lstm_bi_2layer"])
def test_recurrent_hidden_units(rnn):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 6)
            if rnn == "gru":
                self.rnn = nn.GRU(6, 8, batch_first=True)
            else:
                self.rnn = nn.LSTM(6, 8, batch_first=True, num_layers=2 if "2layer" in rnn else 1,
                                   bidirectional="bi" in rnn)
            self.head = nn.Linear(8 * (2 if "bi" in rnn else 1), 3)

        def forward(self, x):
            out, _ = self.rnn(self.inp(x))
            return self.head(out)

    model = Net().eval()
    x = torch.randn(2, 4, 5)

    def choose(DG, m):
        return DG.get_pruning_group(m.rnn, tp.prune_lstm_out_channels, idxs=[1, 6])

    oracle_check(model, x, choose)
    DG = tp.DependencyGraph().build_dependency(model, x)
    choose(DG, model).prune()
    assert model.rnn.hidden_size == 6
    oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.inp, tp.prune_linear_out_channels, idxs=[0]))


def test_unwrapped_parameter_is_found_and_pruned():
    class Scale(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.shape = (dim, 1, 1)
            self.scale = nn.Parameter(torch.rand(dim) + 0.5)

        def forward(self, x):
            return x * self.scale.view(-1, 1, 1)

    model = Chain(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    group = oracle_check(model, x, out_group([2, 3]))
    handlers = [item.dep.handler for item in group]
    assert tp.prune_parameter_out_channels in handlers
    param_items = [item for item in group if item.dep.handler == tp.prune_parameter_out_channels]
    assert param_items[0].idxs == [2, 3]


@pytest.mark.parametrize("handler,layer,x", [
    (tp.prune_conv_out_channels.__self__, nn.Conv2d(4, 6, 3), torch.randn(1, 4, 6, 6)),
    (tp.prune_conv_out_channels.__self__, nn.ConvTranspose2d(4, 6, 3), torch.randn(1, 4, 6, 6)),
    (tp.prune_linear_out_channels.__self__, nn.Linear(4, 6), torch.randn(3, 4)),
    (tp.prune_batchnorm_out_channels.__self__, nn.BatchNorm2d(6), torch.randn(2, 6, 3, 3)),
    (tp.prune_layernorm_out_channels.__self__, nn.LayerNorm(6), torch.randn(2, 6)),
    (tp.prune_groupnorm_out_channels.__self__, nn.GroupNorm(1, 6), torch.randn(2, 6, 3)),
    (tp.prune_instancenorm_out_channels.__self__, nn.InstanceNorm1d(6, affine=True), torch.randn(2, 6, 5)),
    (tp.prune_rmsnorm_out_channels.__self__, nn.RMSNorm(6), torch.randn(2, 6)),
    (tp.prune_prelu_out_channels.__self__, nn.PReLU(6), torch.randn(2, 6, 3)),
    (tp.prune_embedding_out_channels.__self__, nn.Embedding(9, 6), torch.randint(0, 9, (2, 3))),
    (tp.prune_lstm_out_channels.__self__, nn.LSTM(4, 6), torch.randn(3, 2, 4)),
    (tp.prune_depthwise_conv_out_channels.__self__, nn.Conv2d(6, 6, 3, groups=6), torch.randn(1, 6, 5, 5)),
])
def test_builtin_handlers_meet_the_contract(handler, layer, x):
    ran = check_handler(handler, layer, x)
    assert "prune_out_channels" in ran and "channel_params(out)" in ran


def test_low_level_functions_are_exported():
    names = ["prune_conv_out_channels", "prune_conv_in_channels", "prune_depthwise_conv_out_channels",
             "prune_depthwise_conv_in_channels", "prune_batchnorm_out_channels", "prune_batchnorm_in_channels",
             "prune_linear_out_channels", "prune_linear_in_channels", "prune_prelu_out_channels",
             "prune_prelu_in_channels", "prune_layernorm_out_channels", "prune_layernorm_in_channels",
             "prune_embedding_out_channels", "prune_embedding_in_channels", "prune_parameter_out_channels",
             "prune_parameter_in_channels", "prune_multihead_attention_out_channels",
             "prune_multihead_attention_in_channels", "prune_groupnorm_out_channels", "prune_groupnorm_in_channels",
             "prune_instancenorm_out_channels", "prune_instancenorm_in_channels"]
    for name in names:
        assert callable(getattr(tp, name)), name
    assert tp.prune_batchnorm_in_channels == tp.prune_batchnorm_out_channels  # coupled, as in the seed
    assert tp.prune_conv_in_channels != tp.prune_conv_out_channels
    conv = nn.Conv2d(3, 8, 3)
    assert tp.prune_conv_out_channels(conv, [2, 6, 9 - 4]) is conv and conv.out_channels == 5
    param = nn.Parameter(torch.randn(6, 4))
    smaller = tp.prune_parameter_out_channels(param, [0, 5])
    assert isinstance(smaller, nn.Parameter) and smaller.shape == (4, 4)
    torch.testing.assert_close(smaller.data, param.data[1:5])


@pytest.mark.parametrize("fn", [tp.prune_conv_out_channels, tp.prune_conv_in_channels])
def test_functional_conv_pruning_of_a_depthwise_conv_keeps_groups_in_step(fn):
    # Regression (yolo plugin): the plain conv function left groups=8 on a 4-channel depthwise conv.
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(1, 8, 5, 5)
    expected = conv(x)[:, [0, 2, 4, 6]]
    fn(conv, [1, 3, 5, 7])
    assert (conv.in_channels, conv.out_channels, conv.groups) == (4, 4, 4)
    torch.testing.assert_close(conv(x[:, [0, 2, 4, 6]]), expected)


def test_soft_prune_refuses_a_weight_computed_by_a_parametrization_and_changes_nothing():
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 6, 3)), nn.ReLU(), nn.Conv2d(6, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1, 4])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(tp.UnsupportedModelError, match="weight_norm"):
        group.soft_prune()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    group.prune()  # removing the channels goes through the parametrization and works
    assert model[0].weight.shape == (4, 3, 3, 3) and model(x).shape == (1, 4, 6, 6)
