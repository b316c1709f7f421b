"""The two libraries behind one interface: build a criterion, prepare its statistics, prune.

Both libraries get the same model, example inputs and calibration batches, and the
same recipe for the statistics their criteria need: gradients of the section's
loss summed over the calibration batches (``taylor``), per-sample squared
gradients (``hessian``), activations recorded over the calibration batches
(``activation``). A row whose criterion or compensation this build of
pruning_core does not know raises :class:`NotAvailable`.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

OURS = "pruning_core"
TORCH_PRUNING = "torch_pruning"
# The criteria both libraries have today, in table order.
SHARED_CRITERIA = ["l1", "l2", "taylor", "hessian", "activation", "lamp", "fpgm", "random"]
# Calibration-aware criteria from issue 13: scored by the pruner from `calibration=`.
NEW_CRITERIA = ["wanda", "flap", "obs"]
COMPENSATIONS = ["none", "bias", "lstsq"]


class NotAvailable(Exception):
    """The criterion or compensation is not in this build of pruning_core."""


def accumulate_taylor_gradients(model: nn.Module, section: Any) -> None:
    """Gradients of the section's loss, summed over every calibration batch."""
    model.zero_grad()
    for index in range(len(section.calibration)):
        section.per_sample_losses(model, index).mean().backward()


def accumulate_hessian(model: nn.Module, section: Any, importance: Any) -> None:
    """One forward and backward per calibration sample, squared gradients accumulated by the criterion.

    The same per-sample gradients as backpropagating each sample's loss through the
    batch's graph (the models here have no batch-coupled layers in eval mode), at a
    fraction of the cost.
    """
    from .section import batch_size

    importance.zero_grad()
    for batch_index, batch in enumerate(section.calibration):
        for sample in range(batch_size(batch)):
            model.zero_grad()
            section.per_sample_losses(model, batch_index, sample).sum().backward()
            importance.accumulate_grad(model)
    # The last sample's gradients stay: Torch-Pruning's criterion writes its averages into them.


def _missing_feature(error: Exception, criterion: str) -> bool:
    """Whether a pruner set-up error means 'this build lacks the criterion or the keyword'.

    Only the two errors the current code raises for them count: an unknown criterion name,
    and an unknown ``calibration``/``compensation`` keyword. Anything else is a real failure.
    """
    import pruning_core as tp
    from pruning_core.errors import UnknownNameError

    if isinstance(error, UnknownNameError) and criterion not in tp.importance.names():
        return True
    text = str(error)
    return text.startswith("unknown pruner argument") and ("'calibration'" in text or "'compensation'" in text)


def prune_ours(section: Any, model: nn.Module, row: Dict[str, Any]) -> Any:
    """Prune ``model`` in place with pruning_core; returns the pruner."""
    import pruning_core as tp
    from pruning_core.errors import ConfigurationError

    criterion, compensation = row["criterion"], row["compensation"]
    kwargs = section.structure(OURS, model, row)
    if criterion in SHARED_CRITERIA:
        importance: Any = tp.importance.create(criterion, **({"seed": row["seed"]} if criterion == "random" else {}))
    else:
        importance = criterion  # resolved by name by the pruner: unknown names raise here
    if criterion in NEW_CRITERIA or compensation != "none":
        kwargs["calibration"] = list(section.calibration)
    if compensation != "none":
        kwargs["compensation"] = compensation
    try:
        pruner = tp.pruner.BasePruner(model, section.example_inputs, importance=importance, **kwargs)
    except ConfigurationError as error:  # UnknownNameError is a ConfigurationError
        if _missing_feature(error, criterion):
            raise NotAvailable(str(error)) from error
        raise
    _prepare(section, model, criterion, pruner.importance, record=lambda imp: imp.record(model))
    pruner.step()
    section.fixup(OURS, model, pruner)
    return pruner


def tp_importance(criterion: str) -> Any:
    import torch_pruning as tpp

    imp = tpp.importance
    factories = {"l1": lambda: imp.MagnitudeImportance(p=1), "l2": lambda: imp.MagnitudeImportance(p=2),
                 "taylor": imp.TaylorImportance, "hessian": imp.HessianImportance,
                 "activation": imp.ActivationImportance, "lamp": imp.LAMPImportance,
                 "fpgm": imp.FPGMImportance, "random": imp.RandomImportance}
    return factories[criterion]()


def prune_torch_pruning(section: Any, model: nn.Module, row: Dict[str, Any]) -> Any:
    """Prune ``model`` in place with Torch-Pruning 1.6.1; returns the pruner."""
    import torch_pruning as tpp

    importance = tp_importance(row["criterion"])
    kwargs = section.structure(TORCH_PRUNING, model, row)
    pruner = tpp.pruner.BasePruner(model, section.example_inputs, importance=importance, **kwargs)
    # Torch-Pruning's activation hook keeps only the last forward's statistics, so it sees
    # the whole calibration set as one batch.
    _prepare(section, model, row["criterion"], importance, record=lambda imp: imp.compute_importance(model),
             single_batch=True)
    pruner.step()
    section.fixup(TORCH_PRUNING, model, pruner)
    return pruner


def _prepare(section: Any, model: nn.Module, criterion: str, importance: Any, record: Any,
             single_batch: bool = False) -> None:
    if criterion == "taylor":
        accumulate_taylor_gradients(model, section)
    elif criterion == "hessian":
        accumulate_hessian(model, section, importance)
    elif criterion == "activation":
        batches: List[Any] = [section.merged_calibration] if single_batch else list(section.calibration)
        with record(importance), torch.no_grad():
            for batch in batches:
                section.call(model, batch)


PRUNERS = {OURS: prune_ours, TORCH_PRUNING: prune_torch_pruning}
