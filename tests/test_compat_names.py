"""Names that scripts written for Torch-Pruning reach through other paths than the seed's.

``tp.pruner.MetaPruner`` (the pruner's earlier name), the pruners at the top level,
``tp.pruner.function`` and ``tp.pruner.prune_*``, and ``tp.dependency``: each must be
the very object the seed path gives, so such a script prunes exactly as the seed API does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruning_core as tp


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))


@pytest.mark.parametrize("name", ["BasePruner", "MetaPruner", "MagnitudePruner", "GroupNormPruner",
                                  "BNScalePruner", "GrowingRegPruner"])
def test_top_level_pruner_names_are_the_pruner_classes(name):
    expected = tp.pruner.BasePruner if name == "MetaPruner" else getattr(tp.pruner, name)
    assert getattr(tp, name) is expected
    assert name in tp.__all__


def test_old_paths_reach_the_same_objects():
    assert tp.pruner.MetaPruner is tp.pruner.BasePruner
    assert tp.pruner.function is tp.function
    assert tp.pruner.prune_conv_out_channels == tp.prune_conv_out_channels
    assert tp.dependency.DependencyGraph is tp.DependencyGraph
    assert tp.dependency.Group is tp.Group and tp.dependency.Dependency is tp.Dependency
    with pytest.raises(AttributeError, match="prune_nothing_channels"):
        tp.pruner.prune_nothing_channels  # noqa: B018


def test_a_meta_pruner_script_prunes_exactly_as_base_pruner():
    example = torch.randn(1, 3, 12, 12)
    results = []
    for cls in (tp.pruner.MetaPruner, tp.pruner.BasePruner):
        model = _model()
        pruner = cls(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                     ignored_layers=[model[3]])
        pruner.step()
        results.append((model[0].out_channels, model[0].weight.clone(), model(example)))
    assert results[0][0] == results[1][0] == 8
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])


def test_pruner_function_prunes_a_layer_by_hand():
    model = _model()
    tp.pruner.function.prune_conv_out_channels(model[0], idxs=[0, 1])
    assert model[0].out_channels == 14 and model[0].weight.shape[0] == 14


def test_target_ratios_follow_the_schedule_the_dict_and_the_cap():
    model = _model()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 12, 12), importance="l2", pruning_ratio=0.5,
                                  iterative_steps=4, pruning_ratio_dict={model[3]: 0.2}, max_pruning_ratio=0.4,
                                  head_pruning_ratio=0.8, head_pruning_ratio_dict={model[3]: 0.2})
    assert [pruner.get_target_pruning_ratio(model[0], s) for s in range(5)] == [0.0, 0.125, 0.25, 0.375, 0.4]
    assert pruner.get_target_pruning_ratio(model[3], 4) == pytest.approx(0.2)
    assert [pruner.get_target_head_pruning_ratio(model[0], s) for s in range(5)] == [0.0, 0.2, 0.4, 0.4, 0.4]
    assert pruner.get_target_head_pruning_ratio(model[3], 4) == pytest.approx(0.2)
    pruner.step()
    assert pruner.get_target_pruning_ratio(model[0]) == 0.125
    with pytest.raises(tp.ConfigurationError, match="step=5"):
        pruner.get_target_pruning_ratio(model[0], 5)


def test_reset_starts_the_schedule_again_without_undoing_anything():
    model = _model()
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 12, 12), importance="l2", pruning_ratio=0.5,
                                  iterative_steps=2, ignored_layers=[model[3]])
    pruner.step()
    pruner.step()
    assert model[0].out_channels == 8 and pruner.current_step == 2
    pruner.reset()
    assert pruner.current_step == 0
    pruner.step()  # step 1 asks for 25% of the original channels gone: already done
    assert model[0].out_channels == 8 and pruner.current_step == 1


def test_manual_prune_width_removes_the_ratio_named_lowest_scoring_first():
    model = _model()
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 12, 12), importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5)
    expected = model[0].weight.detach().clone()
    full = pruner.DG.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(16)))
    removed = set(torch.argsort(pruner.estimate_importance(full))[:4].tolist())
    pruner.manual_prune_width(model[0], tp.prune_conv_out_channels, 0.25)
    kept = [i for i in range(16) if i not in removed]
    assert model[0].out_channels == 12 and torch.equal(model[0].weight, expected[kept])
    assert model[1].num_features == 12 and model[3].in_channels == 12
    pruner.manual_prune_width(model[0], tp.prune_conv_out_channels, [0, 1])
    assert model[0].out_channels == 10 and torch.equal(model[0].weight, expected[kept[2:]])
    with pytest.raises(tp.ConfigurationError, match="ratio 1.0"):
        pruner.manual_prune_width(model[0], tp.prune_conv_out_channels, 1.0)


def test_group_exec_is_prune_with_a_deprecation_warning():
    model = _model()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 12, 12))
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[2, 5])
    with pytest.warns(DeprecationWarning, match="prune"):
        group.exec()
    assert model[0].out_channels == 14 and model[1].num_features == 14 and model[3].in_channels == 14


class _FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(16, 48), nn.Linear(16, 16), 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def test_the_reported_head_target_is_the_one_step_applies():
    model = nn.Sequential(nn.Linear(6, 16), _FusedAttention(), nn.Linear(16, 3))
    qkv = model[1].qkv
    pruner = tp.pruner.BasePruner(model, torch.randn(2, 5, 6), importance="l2", pruning_ratio=0.0,
                                  num_heads={qkv: 4}, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=0.75, max_pruning_ratio=0.5)
    pruner.step()
    assert pruner.get_target_head_pruning_ratio(qkv) == 0.5
    assert qkv.out_features == 3 * 2 * 4  # 4 heads of 4, half removed: the cap, not 0.75


def test_the_pruner_exposes_its_arguments_as_torch_pruning_does():
    """Scripts read ``pruner.global_pruning`` or ``pruner.per_step_pruning_ratio[pruner.current_step - 1]``."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    pruner = tp.pruner.MetaPruner(model, torch.randn(2, 4), pruning_ratio=0.5, iterative_steps=2,
                                  global_pruning=True, ch_sparsity_dict={model[0]: 0.25}, round_to=2)
    assert (pruner.global_pruning, pruner.round_to, pruner.max_pruning_ratio, pruner.prune_num_heads) == \
        (True, 2, 1.0, False)
    assert pruner.pruning_ratio_dict is pruner.ch_sparsity_dict and pruner.pruning_ratio_dict[model[0]] == 0.25
    assert pruner.per_step_pruning_ratio == [0.0, 0.25, 0.5] and pruner.per_step_head_pruning_ratio == [0.0] * 3
    pruner.step()
    assert pruner.per_step_pruning_ratio[pruner.current_step - 1] == 0.0  # Torch-Pruning's indexing, unchanged
    with pytest.raises(AttributeError, match="no attribute 'global_prunning'"):
        pruner.global_prunning


def test_layer_type_names_of_tp_ops_select_root_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                          nn.Linear(16, 2))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 6, 6))
    roots = [type(g[0].dep.target.module) for g in DG.get_all_groups(root_module_types=(tp.ops.TORCH_CONV,))]
    assert roots == [nn.Conv2d]
    assert issubclass(nn.BatchNorm2d, tp.ops.TORCH_BATCHNORM) and tp.ops.TORCH_LINEAR is nn.Linear
