"""Test helpers: the zero-contribution oracle and input runners."""

from __future__ import annotations

import copy
import random
from typing import Any, Callable, Optional, Sequence

import torch

import pruning_core as tp

def run(model: torch.nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)


def first_tensor(output: Any) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = output[0] if isinstance(output, (tuple, list)) else next(iter(output.values()))
    return output


def oracle_check(model: torch.nn.Module, inputs: Any, choose: Callable[[tp.DependencyGraph, torch.nn.Module], Any],
                 idxs: Optional[Sequence[int]] = None, atol: float = 1e-4, exact: bool = True) -> tp.Group:
    """Prune a group in one copy and zero the same channels in another; outputs must agree.

    ``choose(DG, model)`` returns the group to use (from the copy it is given).
    With ``exact=False`` only shapes and the forward pass are checked.
    """
    pruned, zeroed = copy.deepcopy(model), copy.deepcopy(model)
    reference = first_tensor(run(model, inputs))
    dg_zero = tp.DependencyGraph().build_dependency(zeroed, inputs)
    dg_prune = tp.DependencyGraph().build_dependency(pruned, inputs)
    group_zero, group_prune = choose(dg_zero, zeroed), choose(dg_prune, pruned)
    assert group_prune is not None, "no group to prune"
    assert dg_prune.check_pruning_group(group_prune)
    params_before = sum(p.numel() for p in pruned.parameters())
    group_zero.soft_prune(idxs)
    group_prune.prune(idxs)
    params_after = sum(p.numel() for p in pruned.parameters())
    assert params_after < params_before, "pruning removed no parameters"
    out_pruned = first_tensor(run(pruned, inputs))
    assert out_pruned.shape == reference.shape
    if exact:
        out_zeroed = first_tensor(run(zeroed, inputs))
        torch.testing.assert_close(out_pruned, out_zeroed, atol=atol, rtol=1e-4)
    return group_prune


def some_idxs(n: int, fraction: float = 0.3, rng: Optional[random.Random] = None) -> list:
    rng = rng or random.Random(0)
    k = max(1, min(n - 1, int(n * fraction)))
    return sorted(rng.sample(range(n), k))


def idxs_of(group: tp.Group, name: str) -> list:
    """The idxs of every group member whose qualified name is ``name``."""
    return [item.idxs for item in group if item.dep.target.qualname == name]
