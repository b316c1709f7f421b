"""Oracles for testing pruning: results a correct implementation must reproduce exactly.

Two oracles that plugin authors can run on their own models:

* the **zero-contribution oracle** (:func:`oracle_check`): removing a group of
  channels must give the same outputs as keeping them with their parameters set
  to zero (``Group.soft_prune``), for every model where no operation mixes
  channels other than through weights;
* the **atomicity oracle** (:func:`fingerprint` and :func:`assert_same`): an
  operation that fails must leave the model bit-identical, with the same
  parameter objects (so an optimizer holding them keeps working).

For example, in a plugin's test suite::

    from pruning_core.testing.oracle import oracle_check

    def test_my_block_prunes_like_zeroing():
        model, x = MyBlock(16).eval(), torch.randn(2, 16, 8)
        oracle_check(model, x, lambda DG, m: DG.get_pruning_group(m.fc1, tp.prune_linear_out_channels,
                                                                  idxs=[1, 5]))
"""

from __future__ import annotations

import copy
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pruning_core as tp
from pruning_core.calling import call_model
from pruning_core.graph.record import RECORD_ATTR



def run(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` without gradients; a dict is passed as keywords, a tuple or list as positionals."""
    with torch.no_grad():
        return call_model(model, inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model output (a tensor, a tuple or list, a dict or a ``ModelOutput``)."""
    while not isinstance(output, torch.Tensor):
        output = output[0] if isinstance(output, (tuple, list)) else next(iter(output.values()))
    return output


def oracle_check(model: nn.Module, inputs: Any, choose: Callable[[tp.DependencyGraph, nn.Module], Any],
                 idxs: Optional[Sequence[int]] = None, atol: float = 1e-4, exact: bool = True) -> tp.Group:
    """Prune a group in one copy of ``model`` and zero the same channels in another; outputs must agree.

    :param model: the model; it is not changed (both copies are deep copies).
    :param inputs: example inputs, as accepted by :func:`run`.
    :param choose: ``choose(DG, copy)`` returns the group to use, from the graph of the copy it is given;
        it is called once per copy and must pick the same group both times.
    :param idxs: the channels to remove within the group (``None``: the group's own idxs).
    :param atol: absolute tolerance of the comparison (the relative tolerance is 1e-4).
    :param exact: with ``False`` only the output shape and the forward pass are checked, for models
        where the identity does not hold (normalisation over channels, attention).
    :returns: the group that was pruned (in the pruned copy).
    :raises AssertionError: when the graph refuses the group, pruning removes no parameters, the output
        shape changes, or the outputs differ.
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


def some_idxs(n: int, fraction: float = 0.3, rng: Optional[random.Random] = None) -> List[int]:
    """A sorted sample of about ``fraction`` of ``range(n)``: at least one index, never all of them.

    Without ``rng`` the sample is the same on every call (``random.Random(0)``).
    """
    rng = rng or random.Random(0)
    k = max(1, min(n - 1, int(n * fraction)))
    return sorted(rng.sample(range(n), k))


def idxs_of(group: tp.Group, name: str) -> List[Any]:
    """The idxs of every member of ``group`` whose module's qualified name is ``name``."""
    return [item.idxs for item in group if item.dep.target.qualname == name]


Fingerprint = Dict[str, Tuple[Dict[str, Any], Dict[str, Tuple[int, torch.Tensor, bool]]]]


def fingerprint(model: nn.Module) -> Fingerprint:
    """Everything a failed operation must leave untouched: per module, its plain attributes and
    pruning record, and each parameter and buffer's identity, values and ``requires_grad``."""
    state: Fingerprint = {}
    for name, module in model.named_modules():
        attrs = {key: value for key, value in module.__dict__.items()
                 if not key.startswith("_") and isinstance(value, (int, float, bool, str, tuple, type(None)))}
        attrs["(pruning record)"] = repr(module.__dict__.get(RECORD_ATTR))
        tensors = {}
        for tname, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is not None:
                tensors[tname] = (id(tensor), tensor.detach().clone(), tensor.requires_grad)
        state[name] = (attrs, tensors)
    return state


def assert_same(before: Fingerprint, after: Fingerprint) -> None:
    """Assert two :func:`fingerprint` results are identical: same modules, attributes, tensor objects
    and values. The message names the first module or tensor that differs."""
    assert before.keys() == after.keys(), f"modules differ: {sorted(set(before) ^ set(after))}"
    for name in before:
        attrs_b, tensors_b = before[name]
        attrs_a, tensors_a = after[name]
        assert attrs_b == attrs_a, name
        assert tensors_b.keys() == tensors_a.keys(), name
        for tname in tensors_b:
            id_b, data_b, grad_b = tensors_b[tname]
            id_a, data_a, grad_a = tensors_a[tname]
            assert id_b == id_a, f"{name}.{tname} was replaced"  # optimizer-held identity survives
            assert torch.equal(data_b, data_a), f"{name}.{tname} changed"
            assert grad_b == grad_a, f"{name}.{tname}.requires_grad changed"


__all__ = ["run", "first_tensor", "oracle_check", "some_idxs", "idxs_of", "fingerprint", "assert_same"]
