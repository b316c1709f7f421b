"""Property-based tests: random architectures, random groups, checked against oracles."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pruning_core as tp
from pruning_core.testing import architectures
from pruning_core.testing.oracle import first_tensor, oracle_check, run

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _choose(rng_seed):
    def choose(DG, model):
        rng = random.Random(rng_seed)
        groups = list(DG.get_all_groups())
        if not groups:
            return None
        group = rng.choice(groups)
        n = group.num_channels
        count = rng.randint(1, n - 1)
        return group.channel_group(sorted(rng.sample(range(n), count)))
    return choose


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_random_safe_architectures_match_the_zero_contribution_oracle(seed):
    rng = random.Random(seed)
    spec = architectures.random_spec(rng, allow_unsafe=False)
    model, x = architectures.build(spec, seed)
    DG = tp.DependencyGraph().build_dependency(model, x)
    if not list(DG.get_all_groups()):
        return
    oracle_check(model, x, _choose(seed), atol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_random_architectures_stay_runnable_and_trainable_after_pruning(seed):
    rng = random.Random(seed)
    spec = architectures.random_spec(rng, allow_unsafe=True)
    model, x = architectures.build(spec, seed)
    reference = first_tensor(run(model, x))
    DG = tp.DependencyGraph().build_dependency(model, x)
    pruned_any = False
    for group in list(DG.get_all_groups()):
        if group.num_channels < 2 or rng.random() < 0.3:
            continue
        chosen = group.channel_group(sorted(rng.sample(range(group.num_channels), group.num_channels // 2)))
        if DG.check_pruning_group(chosen):
            chosen.prune()
            pruned_any = True
    model.train()
    out = model(x)
    assert out.shape == reference.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad) or not pruned_any
