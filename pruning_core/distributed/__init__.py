"""Pruning under ``torch.distributed``: statistics reduced across ranks, identical decisions everywhere.

* :func:`resolve` picks the process group a pruner reduces over (``distributed=None|True|False``,
  ``process_group=``).
* :class:`StateReducer` and the :class:`ReducibleState` protocol: every criterion or pruner with
  accumulated state implements ``reduce_state(reducer, model)``; the pruner calls it before scoring.
* :func:`check_plan` compares a digest of each step's plan across ranks and raises
  :class:`~pruning_core.errors.PlanMismatchError` on every rank if they differ.
* :func:`rewrap` re-creates a ``DistributedDataParallel`` wrapper after pruning;
  :func:`check_model` refuses sharded (FSDP/DTensor) models with the supported recipe, and
  :func:`unsharded_copy` gathers a sharded model into a plain copy that can be pruned.

Nothing here is imported by ``import pruning_core``; it loads with the pruner.
"""

from __future__ import annotations

from .context import Context, initialized, resolve
from .plan import PlanEntry, check_plan, entry
from .state import ReducibleState, StateReducer, reduce_state
from .wrappers import FSDP_RECIPE, check_model, rewrap, unsharded_copy

__all__ = ["Context", "initialized", "resolve", "PlanEntry", "check_plan", "entry", "ReducibleState",
           "StateReducer", "reduce_state", "FSDP_RECIPE", "check_model", "rewrap", "unsharded_copy"]
