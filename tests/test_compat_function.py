"""``tp.function``: Torch-Pruning's per-layer pruner classes, subclassed the way its users do."""

from __future__ import annotations

from typing import List, Sequence

import pytest
import torch
from torch import nn

import pruning_core as tp

TP_CLASS_NAMES = ["BasePruningFunc", "LinearPruner", "ConvPruner", "DepthwiseConvPruner", "BatchnormPruner",
                  "LayernormPruner", "GroupNormPruner", "InstanceNormPruner", "PReLUPruner", "EmbeddingPruner",
                  "MultiheadAttentionPruner", "LSTMPruner", "ParameterPruner"]


@pytest.mark.parametrize("name", TP_CLASS_NAMES)
def test_every_torch_pruning_class_name_exists_and_is_a_class(name):
    cls = getattr(tp.function, name)
    assert isinstance(cls, type)
    assert name in tp.function.__all__


def test_the_classes_are_the_handlers_the_graph_uses():
    # tp.prune_linear_out_channels is a bound method of the built-in nn.Linear handler.
    assert isinstance(tp.prune_linear_out_channels.__self__, tp.function.LinearPruner)
    assert isinstance(tp.prune_batchnorm_out_channels.__self__, tp.function.BatchnormPruner)
    assert isinstance(tp.prune_lstm_out_channels.__self__, tp.function.LSTMPruner)
    assert tp.function.prune_conv_in_channels == tp.prune_conv_in_channels
    for fn in ("prune_conv_out_channels", "prune_multihead_attention_in_channels", "prune_parameter_out_channels"):
        assert fn in tp.function.__all__ and getattr(tp.function, fn) == getattr(tp, fn)


def test_from_import_star_and_attribute_access():
    namespace: dict = {}
    exec("from pruning_core.function import *", namespace)
    assert "LinearPruner" in namespace and "prune_linear_in_channels" in namespace
    assert "function" in tp.__all__


class TaggedLinear(nn.Linear):
    """A user layer class that only differs by its type."""


class RecordingLinearPruner(tp.function.LinearPruner):
    """Torch-Pruning style: override the public method, delegate to the parent."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        self.calls.append(("out", sorted(int(i) for i in idxs)))
        return super().prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        self.calls.append(("in", sorted(int(i) for i in idxs)))
        return super().prune_in_channels(layer, idxs)


def test_subclass_override_is_called_through_customized_pruners():
    model = nn.Sequential(TaggedLinear(6, 16), nn.ReLU(), TaggedLinear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    handler = RecordingLinearPruner()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(2, 6), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5, customized_pruners={TaggedLinear: handler})
    pruner.step()
    kinds = sorted(kind for kind, _ in handler.calls)
    # Layer 0 loses outputs, layer 2 loses inputs (from layer 0) and outputs (its own group).
    assert kinds == ["in", "out", "out"]
    assert all(len(idxs) == 8 for kind, idxs in handler.calls if kind == "in")
    assert model[0].out_features == 8 and model[2].in_features == 8 and model[2].out_features == 6
    assert model(torch.randn(2, 6)).shape == (2, 3)


class ScaleBias(nn.Module):
    """A layer no built-in handler knows: per-channel scale and shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ScaleBiasPruner(tp.function.BasePruningFunc):
    """Written exactly as a Torch-Pruning user would: the four methods, in == out."""

    calls = 0

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        type(self).calls += 1
        keep = [i for i in range(layer.scale.shape[0]) if i not in set(idxs)]
        layer.scale = nn.Parameter(layer.scale.data[keep].clone())
        layer.shift = nn.Parameter(layer.shift.data[keep].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.scale.shape[0]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.scale.shape[0]


def test_base_class_subclass_prunes_a_custom_layer_in_a_group():
    model = nn.Sequential(nn.Linear(5, 10), ScaleBias(10), nn.ReLU(), nn.Linear(10, 2)).eval()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 5), customized_pruners={ScaleBias: ScaleBiasPruner()})
    group = DG.get_pruning_group(model[0], tp.function.prune_linear_out_channels, idxs=[1, 4, 7])
    assert any(isinstance(dep.target.module, ScaleBias) for dep, _ in group)
    x = torch.randn(3, 5)
    # The removed channels' contribution, computed by hand, is what the pruned model loses.
    hidden = torch.relu(model[1](model[0](x)))
    kept = [i for i in range(10) if i not in (1, 4, 7)]
    expected = hidden[:, kept] @ model[3].weight[:, kept].T + model[3].bias
    before_calls = ScaleBiasPruner.calls
    group.prune()
    assert ScaleBiasPruner.calls == before_calls + 1
    assert model[1].scale.shape == (7,)
    torch.testing.assert_close(model(x), expected)
