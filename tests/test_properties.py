"""Property-based tests: random architectures, random groups, checked against oracles.

Hypothesis draws the blocks, their widths and the channels to remove, so a failure
shrinks to the smallest model and the fewest channels that still fail.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pruning_core as tp
from pruning_core.testing import architectures
from pruning_core.testing.oracle import first_tensor, oracle_check, run
from pruning_core.testing.strategies import specs

# Derandomized: make test must give the same answer on every run (a random draw found the bug tested
# last in one CI run of six); the open-ended random search is make fuzz.
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _removal(data, n: int):
    """At least one and at most ``n - 1`` of ``n`` channels, drawn by hypothesis."""
    return sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1), label="removed"))


@SETTINGS
@given(spec=specs(allow_unsafe=False), data=st.data())
def test_random_safe_architectures_match_the_zero_contribution_oracle(spec, data):
    model, x = architectures.build(spec)
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = list(DG.get_all_groups())
    assert groups, f"the generator promises a prunable group (its tail block), but {spec} has none"
    index = data.draw(st.integers(0, len(groups) - 1), label="group")
    channels = _removal(data, groups[index].num_channels)
    # Group order is deterministic, so the same index picks the same group in each copy's graph.
    oracle_check(model, x, lambda dg, _: list(dg.get_all_groups())[index].channel_group(channels), atol=1e-4)


@SETTINGS
@given(spec=specs(allow_unsafe=True), data=st.data())
def test_random_architectures_stay_runnable_and_trainable_after_pruning(spec, data):
    model, x = architectures.build(spec)
    reference = first_tensor(run(model, x))
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = list(DG.get_all_groups())
    assert groups, f"the generator promises a prunable group (its tail block), but {spec} has none"
    pruned_any = False
    for group in groups:
        if group.num_channels < 2 or not data.draw(st.booleans(), label="prune this group"):
            continue
        chosen = group.channel_group(_removal(data, group.num_channels))
        if DG.check_pruning_group(chosen):
            chosen.prune()
            pruned_any = True
    model.train()
    out = model(x)
    assert out.shape == reference.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad) or not pruned_any


def test_a_constant_slice_on_a_group_boundary_keeps_its_channels():
    """The draw that found it: ``x[:, :2]`` after a GroupNorm of 3 groups of 2 cuts on the groups' boundary;
    the constant 2 still counts the channels within the first group, so those stay and the model runs."""
    spec = [{"kind": "stem", "out": 8}, {"kind": "conv", "in": 8, "out": 6},
            {"kind": "groupnorm", "in": 6, "out": 6, "groups": 3},
            {"kind": "slice_cat", "in": 6, "out": 6, "keep": 2, "extra": 4},
            {"kind": "transpose_conv", "in": 6, "out": 6}, {"kind": "pool_head", "in": 6, "classes": 5}]
    model, x = architectures.build(spec)
    tp.pruner.BasePruner(model, x, importance="l2", pruning_ratio=0.5).step()
    assert model.blocks[1].conv.out_channels == 6
    model.train()
    out = model(x)
    assert out.shape == (1, 5)
    out.square().mean().backward()
