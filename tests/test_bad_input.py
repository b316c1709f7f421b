"""Bad input: each case raises a typed pruning_core error that says what to do, and changes nothing."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
from pruning_core import _plugins
from pruning_core.testing.oracle import assert_same, fingerprint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        tokens = y.flatten(2).transpose(1, 2)
        a, _ = self.attn(tokens, tokens, tokens)
        return self.head((tokens + a).mean(1))


X = torch.randn(2, 3, 6, 6)


class OtherDevice(torch.Tensor):
    """Reports another device, to test the device check on a machine without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _graph(model):
    return tp.DependencyGraph().build_dependency(model, X)


def _group(idxs):
    def action(model):
        DG = _graph(model)
        DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=idxs).prune()
    return action


def _pruner(**kwargs):
    def action(model):
        tp.pruner.BasePruner(model, X, **kwargs).step()
    return action


def _empty_group(model):
    DG = _graph(model)
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=list(range(8)))
    assert not DG.check_pruning_group(group)
    group.prune()


def _stale_group(model):
    DG = _graph(model)
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=[1])
    DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=[2]).prune()
    raise_later = group  # keep the stale group around, as a user might
    model_state = fingerprint(model)
    try:
        raise_later.prune()
    finally:
        assert_same(model_state, fingerprint(model))


class Wrong:
    def __call__(self, group):
        return torch.ones(group.num_channels + 1)


CASES = [
    ("ratio above one", _pruner(pruning_ratio=1.2), tp.ConfigurationError, "pruning_ratio must be in"),
    ("ratio of one", _pruner(pruning_ratio=1.0), tp.ConfigurationError, "fraction of channels"),
    ("negative ratio", _pruner(pruning_ratio=-0.5), tp.ConfigurationError, "pruning_ratio must be in"),
    ("ratio dict above one", lambda m: _pruner(pruning_ratio_dict={m.conv: 2.0})(m), tp.ConfigurationError,
     r"pruning_ratio_dict\[Conv2d\]"),
    ("ratio dict key not a module", _pruner(pruning_ratio_dict={"conv": 0.5}), tp.ConfigurationError,
     "keys must be modules"),
    ("index out of range", _group([3, 8]), tp.InvalidIndicesError, "out of range for 8 channels"),
    ("negative index", _group([-1]), tp.InvalidIndicesError, "out of range"),
    ("duplicated indices", _group([1, 1]), tp.InvalidIndicesError, "duplicates"),
    ("float indices", _group([1.5]), tp.InvalidIndicesError, "must be ints"),
    ("string indices", _group("12"), tp.InvalidIndicesError, "list of ints"),
    ("bool tensor indices", _group(torch.tensor([True, False])), tp.InvalidIndicesError, "must be integers"),
    ("group emptying a layer", _empty_group, tp.EmptyLayerError, "keep at least one"),
    ("ignored layer from another model", _pruner(ignored_layers=[nn.Linear(8, 4)]), tp.ConfigurationError,
     "not part of the model"),
    ("ignored parameter from another model", _pruner(ignored_layers=[nn.Parameter(torch.ones(3))]),
     tp.ConfigurationError, "not part of the model"),
    ("ignored item of the wrong type", _pruner(ignored_layers=["conv"]), tp.ConfigurationError,
     "must hold modules or parameters"),
    ("inputs of the wrong shape", lambda m: tp.DependencyGraph().build_dependency(m, torch.randn(2, 5, 6, 6)),
     tp.TracingError, "forward pass failed while tracing in conv"),
    ("inputs of the wrong dtype", lambda m: tp.DependencyGraph().build_dependency(m, X.double()),
     tp.ConfigurationError, "convert the inputs"),
    ("inputs on the wrong device", lambda m: tp.DependencyGraph().build_dependency(m, X.as_subclass(OtherDevice)),
     tp.ConfigurationError, "move the inputs"),
    ("no inputs", lambda m: tp.DependencyGraph().build_dependency(m), tp.ConfigurationError, "needs example_inputs"),
    ("unknown importance", _pruner(importance="tayler"), tp.UnknownNameError, "Did you mean 'taylor'"),
    ("importance returning the wrong length", _pruner(importance=Wrong()), tp.ConfigurationError,
     r"returned \d+ scores for a group of \d+ channels"),
    ("unknown pruner argument", _pruner(pruning_ration=0.5), tp.ConfigurationError, "did you mean pruning_ratio"),
    ("num_heads that do not divide", lambda m: _pruner(num_heads={m.conv: 3})(m), tp.ConfigurationError,
     "cannot be split into 3 heads"),
    ("bad iterative steps", _pruner(iterative_steps=-1), tp.ConfigurationError, "iterative_steps"),
    ("customized pruner missing methods", lambda m: tp.DependencyGraph().build_dependency(
        m, X, customized_pruners={nn.Conv2d: object()}), tp.ConfigurationError, "lacks prune_out_channels"),
    ("DataParallel", lambda m: _graph(nn.DataParallel(m)), tp.UnsupportedModelError, "pass model.module"),
    ("torch.compile", lambda m: _graph(torch.compile(m)), tp.UnsupportedModelError, "model._orig_mod"),
    ("not a module", lambda m: tp.DependencyGraph().build_dependency(lambda x: x, X), tp.ConfigurationError,
     "must be a torch.nn.Module"),
    ("history for another model", lambda m: _graph(m).replay([{"module": "nope", "kind": "out", "idxs": [0]}]),
     tp.ConfigurationError, "does not match this model"),
]


@pytest.mark.parametrize("name,action,error,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_typed_error_and_changes_nothing(name, action, error, message):
    torch.manual_seed(0)
    model = Net().eval()
    before = fingerprint(model)
    with pytest.raises(error, match=message) as raised:
        action(model)
    assert isinstance(raised.value, tp.PruningError)
    assert_same(before, fingerprint(model))


def test_a_stale_group_is_refused_and_changes_nothing():
    model = Net().eval()
    with pytest.raises(tp.GraphError, match="get a fresh group"):
        _stale_group(model)


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_distributed_data_parallel_is_refused(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = Net()
        wrapped = nn.parallel.DistributedDataParallel(model)
        with pytest.raises(tp.UnsupportedModelError, match="pass model.module"):
            _graph(wrapped)
    finally:
        dist.destroy_process_group()


def test_module_without_handler_names_the_extra(monkeypatch):
    cls = type("Spectral", (nn.Module,), {"__module__": "timm.layers.fancy",
                                           "__init__": lambda self: (nn.Module.__init__(self),
                                                                     setattr(self, "w", nn.Parameter(torch.ones(8))))[0],
                                           "forward": lambda self, x: torch.fft.fft(x * self.w[:, None, None]).real})
    model = nn.Sequential(nn.Conv2d(3, 8, 1), cls(), nn.Conv2d(8, 2, 1))
    monkeypatch.setenv("PRUNING_CORE_DISABLE_PLUGINS", "timm")
    _plugins.reset_hub()
    try:
        DG = tp.DependencyGraph().build_dependency(model, X)
        with pytest.raises(tp.NoHandlerError, match=r'pip install "pruning-core\[timm\]"'):
            DG.get_pruning_group(model[1], tp.prune_conv_out_channels, idxs=[0])
    finally:
        monkeypatch.delenv("PRUNING_CORE_DISABLE_PLUGINS")
        _plugins.reset_hub()


def test_plugin_that_fails_to_load_is_a_typed_error_in_strict_mode(monkeypatch):
    class EntryPoint:
        name, value = "broken", "broken.plugin"
        dist = types.SimpleNamespace(metadata={"Name": "broken-dist"}, version="1")

        def load(self):
            raise ImportError("no module named broken")

    real = _plugins.metadata.entry_points
    monkeypatch.setattr(_plugins.metadata, "entry_points",
                        lambda **kw: [EntryPoint()] if kw.get("group") == "pruning_core" else real(**kw))
    monkeypatch.setenv("PRUNING_CORE_STRICT_PLUGINS", "1")
    _plugins.reset_hub()
    try:
        with pytest.raises(tp.PluginError, match="broken-dist"):
            _plugins.get_hub()
    finally:
        monkeypatch.delenv("PRUNING_CORE_STRICT_PLUGINS")
        _plugins.reset_hub()


def test_index_list_from_the_graph_is_revalidated_after_a_handler_edits_it():
    # The graph passes a list that remembers its tensor form; an edited list must be checked again.
    from pruning_core.layer_handler import SortedIndices, as_index_tensor

    idxs = SortedIndices(torch.tensor([3, 1, 2]))
    assert list(idxs) == [1, 2, 3] and torch.equal(as_index_tensor(idxs, 4, "layer"), torch.tensor([1, 2, 3]))
    with pytest.raises(tp.InvalidIndicesError, match="out of range for 3 channels"):
        as_index_tensor(idxs, 3, "layer")
    idxs.append(1)
    with pytest.raises(tp.InvalidIndicesError, match="duplicates"):
        as_index_tensor(idxs, 4, "layer")
    idxs[-1] = 0
    assert torch.equal(as_index_tensor(idxs, 4, "layer"), torch.tensor([0, 1, 2, 3]))
