"""``BasePruner``: score every group, remove the lowest-scoring channels, step by step."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from .._gc import without_gc
from .._hint_memo import add_hints, remembering_hints
from ..errors import ConfigurationError, PruneFailedError, PruningError, warn
from ..graph.depgraph import DependencyGraph
from ..calibration.runner import Calibrator
from ..graph.dims import leaves
from ..graph.group import Group
from ..graph.grouping import expand_ignored
from ..graph.validate import bisect_failures
from .options import LEGACY_NAMES, PruningOptions, schedule
from .planning import PlannedGroup, group_for, plan_step, resolve_ratio
from . import sync
from .structure import apply_structure, head_size_attributes


def resolve_importance(importance: Any) -> Any:
    """An importance object from an instance, a class, or a registered name ("l2", "taylor", ...)."""
    if importance is None:
        from ..importance import GroupMagnitudeImportance

        return GroupMagnitudeImportance(p=2)
    if isinstance(importance, str):
        from ..importance import create

        return create(importance)
    if isinstance(importance, type):
        return importance()
    if not callable(importance):
        raise ConfigurationError(f"importance must be a criterion, a criterion class or a name, got {importance!r}")
    return importance


_OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(PruningOptions))


class BasePruner:
    """Prunes a model to a target ratio with any importance criterion.

    The keyword arguments are Torch-Pruning's; see :class:`PruningOptions` for
    each. The main ones: ``pruning_ratio`` (fraction of channels removed from
    every group), ``global_pruning`` (rank channels of all groups together),
    ``pruning_ratio_dict`` (per-layer or per-block ratios; a tuple of modules
    shares one ratio and one ranking), ``ignored_layers`` (their output channels
    are never removed; their inputs follow their producers), ``iterative_steps``,
    ``round_to``, ``num_heads`` with ``prune_num_heads``/``prune_head_dims``.
    """

    default_importance: Optional[str] = None

    @without_gc
    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, **kwargs: Any) -> None:
        self.options = PruningOptions.from_kwargs(**kwargs)
        sync.check_model(model)  # a DDP wrapper or a sharded (FSDP) model: a clear error with the recipe
        self.model = model
        self.example_inputs = example_inputs
        if importance is None and self.default_importance is not None:
            importance = self.default_importance
        self.importance = resolve_importance(importance)
        with remembering_hints():  # the plugins' hints for this model, collected once
            add_hints(model, head_size_attributes(model, self.options.num_heads))
            self._set_up(model, example_inputs)

    def _set_up(self, model: nn.Module, example_inputs: Any) -> None:
        options = self.options
        self.DG = DependencyGraph().build_dependency(
            model, example_inputs, forward_fn=options.forward_fn, output_transform=options.output_transform,
            unwrapped_parameters=options.unwrapped_parameters, customized_pruners=options.customized_pruners,
            validate=options.validate)
        self.ignored_layers = list(options.ignored_layers)
        self._apply_structure()
        self.current_step = 0
        self._groups = self._plan_groups()
        self._calibrator = Calibrator(self)  # calibration statistics and compensation (pruning_core/calibration)

    # -- seed-compatible attributes -------------------------------------------------
    @property
    def pruning_ratio(self) -> float:
        return self.options.pruning_ratio

    @property
    def iterative_steps(self) -> int:
        return self.options.iterative_steps

    def __getattr__(self, name: str) -> Any:
        """Torch-Pruning keeps its arguments as attributes (``pruner.global_pruning``): read them from the options."""
        options = self.__dict__.get("options")
        field = LEGACY_NAMES.get(name, name)
        if options is not None and field in _OPTION_FIELDS:
            return getattr(options, field)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def per_step_pruning_ratio(self) -> List[float]:
        """The target ratio after each step (``[0, ..., pruning_ratio]``), as Torch-Pruning lists it."""
        return schedule(self.options, self.options.pruning_ratio)

    @property
    def per_step_head_pruning_ratio(self) -> List[float]:
        """The target head ratio after each step (``[0, ..., head_pruning_ratio]``)."""
        return schedule(self.options, self.options.head_pruning_ratio)

    @property
    def num_heads(self) -> Dict[nn.Module, int]:
        """Each layer given in ``num_heads=`` and its current head count.

        As in Torch-Pruning, read it after pruning to update attributes a forward uses:
        ``m.num_heads = pruner.num_heads[m.qkv]``.
        """
        counts = self.DG.head_counts()
        return {module: counts.get(module, declared) * self._heads_per_unit.get(module, 1)
                for module, declared in self.options.num_heads.items()}

    @property
    def groups(self) -> List[PlannedGroup]:
        """The groups this pruner manages (after ignoring and structure hints)."""
        return list(self._groups)

    # -- set-up --------------------------------------------------------------------
    def _apply_structure(self) -> None:
        """User structure arguments first, then what plugins know (heads, output heads to keep)."""
        self._rounding, self._heads_per_unit = apply_structure(self.DG, self.options, self.model, self.ignored_layers)

    def _plan_groups(self) -> List[PlannedGroup]:
        options = self.options
        expand_ignored(self.ignored_layers, self.model)  # validates: raises on foreign modules
        planned: List[PlannedGroup] = []
        rounding = self._hinted_rounding()
        # Groups are verified after each step (see step()), on the real result, not by trial copies here.
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                            root_module_types=options.root_module_types, validate=False):
            atom = group.atoms[0]
            owner = group.root_slot.target.owner
            is_head = atom in self.DG.head_atoms
            if is_head:
                ratio, scope = resolve_ratio(owner, options.head_pruning_ratio_dict, options.head_pruning_ratio, "heads")
            else:
                ratio, scope = resolve_ratio(owner, options.pruning_ratio_dict, options.pruning_ratio, "tuple")
            if scope is None:
                if options.global_pruning:
                    scope = ("global", "heads" if is_head else "channels")
                else:
                    scope = ("local", len(planned))
            root_size = self.DG.index.size(group.root_slot)
            planned.append(PlannedGroup(atom, group.root_slot, atom.current_size, ratio, scope, is_head,
                                        max(1, root_size // max(1, atom.current_size)),
                                        rounding.get(id(atom), 1)))
        if options.global_pruning and options.isomorphic:
            signatures: Dict[Any, int] = {}
            for group in planned:
                if group.scope[0] == "global":
                    group.scope = ("global", signatures.setdefault(self._signature(group), len(signatures)))
        return planned

    def _hinted_rounding(self) -> Dict[int, int]:
        """Atom id -> keep a multiple of this many channels, from plugins' ``round_to`` hints."""
        steps: Dict[int, int] = {}
        for module, step in getattr(self, "_rounding", {}).items():
            atoms = leaves(self.DG.slots.channel_slot(module, "out").expr)
            if len(atoms) == 1:  # a width of one kind of channel (not heads x head size)
                steps[id(atoms[0])] = step
        # Operators that need aligned widths (grouped matrix products of fused experts).
        for expr, multiple in self.DG.traced.recorder.space.multiples:
            for atom in leaves(expr):
                steps[id(atom)] = steps.get(id(atom), 1) * multiple // math.gcd(steps.get(id(atom), 1), multiple)
        return steps

    def _signature(self, planned: PlannedGroup) -> Any:
        """Groups with the same members (layer types and sizes) are isomorphic."""
        group = self.full_group(planned)
        return tuple(sorted((type(item.dep.target.owner).__name__, item.dep.slot.kind, len(item.idxs))
                            for item in group))

    # -- scoring ---------------------------------------------------------------------
    def full_group(self, planned: PlannedGroup) -> Group:
        return self.DG.make_group([(planned.atom, torch.arange(planned.atom.current_size))], planned.root)

    def estimate_importance(self, group: Union[Group, PlannedGroup]) -> torch.Tensor:
        """One score per channel of ``group`` (higher is more important)."""
        if isinstance(group, PlannedGroup):
            group = self.full_group(group)
        scores = self.importance(group)
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
        if scores.numel() != group.num_channels:
            raise ConfigurationError(
                f"{type(self.importance).__name__} returned {scores.numel()} scores for a group of "
                f"{group.num_channels} channels rooted at {group.root_slot.describe()}")
        return scores

    def get_all_groups(self) -> Iterator[Group]:
        """The groups this pruner would prune, with all their channels."""
        for planned in self._groups:
            if planned.current > 0:
                yield self.full_group(planned)

    # -- Torch-Pruning's step bookkeeping ----------------------------------------------
    def reset(self) -> None:
        """Start the iterative schedule again (the next ``step()`` is step 1; nothing pruned comes back)."""
        self.current_step = 0

    def get_target_pruning_ratio(self, module: nn.Module, step: int = -1) -> float:
        """The fraction of channels the groups rooted in ``module`` have lost after ``step`` (default: the
        current step): ``pruning_ratio_dict``'s entry for it, else ``pruning_ratio``, on the schedule,
        capped at ``max_pruning_ratio``."""
        return self._target(module, self.options.pruning_ratio_dict, self.options.pruning_ratio, "tuple", step)

    def get_target_head_pruning_ratio(self, module: nn.Module, step: int = -1) -> float:
        """As :meth:`get_target_pruning_ratio`, for the heads of attention rooted in ``module``
        (``head_pruning_ratio_dict``, ``head_pruning_ratio``; the cap applies to heads too)."""
        options = self.options
        return self._target(module, options.head_pruning_ratio_dict, options.head_pruning_ratio, "heads", step)

    def _target(self, module: nn.Module, table: Dict[Any, float], default: float, kind: str, step: int) -> float:
        # The ratio as _plan_groups resolves it, on the schedule plan_step follows, capped as min_keep caps it.
        step = self.current_step if step < 0 else step
        if step > self.options.iterative_steps:
            raise ConfigurationError(f"step={step}: this pruner has {self.options.iterative_steps} iterative "
                                     "steps; pass a step between 0 and that")
        ratio, _ = resolve_ratio(module, table, default, kind)
        return min(schedule(self.options, ratio)[step], self.options.max_pruning_ratio)

    def manual_prune_width(self, layer: nn.Module, pruning_fn: Any,
                           pruning_ratios_or_idxs: Union[float, Sequence[int]]) -> None:
        """Prune ``layer``'s channels on the ``pruning_fn`` side and everything coupled to them.

        A float removes that fraction of the channels, the lowest-scoring by this pruner's
        importance (Torch-Pruning 1.6.1 removes ``1 - ratio`` instead of the ratio its docstring
        names); a list gives the channel indices.
        """
        if isinstance(pruning_ratios_or_idxs, float):
            ratio = pruning_ratios_or_idxs
            if not 0.0 <= ratio < 1.0:
                raise ConfigurationError(f"manual_prune_width: ratio {ratio} must be in [0, 1)")
            out = self.DG.is_out_channel_pruning_fn(pruning_fn)
            channels = int(self.DG.get_out_channels(layer) if out else self.DG.get_in_channels(layer))
            full = self.DG.get_pruning_group(layer, pruning_fn, list(range(channels)))
            idxs = torch.argsort(self.estimate_importance(full))[:int(channels * ratio)].tolist()
        else:
            idxs = list(pruning_ratios_or_idxs)
        if idxs:
            self.DG.get_pruning_group(layer, pruning_fn, idxs).prune()

    # -- pruning -----------------------------------------------------------------------
    def step(self, interactive: bool = False) -> Optional[Iterator[Group]]:
        """Advance one iterative step: remove the scheduled fraction of channels.

        With ``interactive=True``, return the groups to prune instead; call
        ``group.prune()`` (or ``group.soft_prune()``, or ``group.prune(idxs=...)``)
        on each, one at a time.
        """
        if self.current_step >= self.options.iterative_steps:
            warn(f"all {self.options.iterative_steps} iterative steps are done; step() does nothing")
            return iter(()) if interactive else None
        self.current_step += 1
        try:
            self._calibrator.before_step(interactive)  # fresh calibration statistics for this step
            self.sync_statistics()  # reduce this step's statistics across ranks (calibration included)
            if interactive:
                plan = plan_step(self._groups, self.current_step, self.options, self._score_planned)
                sync.check_plan(self, plan)
                return self._interactive(plan)
            self._run_step()
            self._calibrator.after_step()  # statistics are stale once the step is done: free them
        except BaseException:
            self.current_step -= 1  # the step did not happen
            raise
        return None

    def sync_statistics(self) -> None:
        """Sum the criterion's accumulated statistics over the ranks (see ``distributed``); step() calls it."""
        sync.reduce_statistics(self)

    def _score_planned(self, planned: PlannedGroup) -> torch.Tensor:
        return self.estimate_importance(planned)

    def _prune_plan(self, plan: Sequence) -> None:
        for planned, idxs in plan:
            if idxs:
                group = group_for(self.DG, planned, idxs)
                self._calibrator.compensate(group)  # refit the consumers before their inputs go
                group.prune()

    @without_gc
    def _run_step(self) -> None:
        """Prune the whole step as one transaction, verified by a forward pass on the example inputs.

        If the pruned model no longer runs (a size written in the model's code,
        say), the step is undone, the groups responsible are found by bisection
        and frozen with the reason, and the step is planned again without them.
        """
        while True:
            walk = self._calibrator.sequential_walk()  # sequential calibration plans and prunes block by block
            plan = [] if walk else [(g, idxs) for g, idxs in plan_step(self._groups, self.current_step,
                                                                         self.options, self._score_planned) if idxs]
            if not walk:
                sync.check_plan(self, plan)  # every rank must remove the same channels
            with self.DG.transaction(step=True) as transaction:
                if walk:
                    plan = walk()
                else:
                    self._prune_plan(plan)
                self.DG.end_step()
                failure = self.DG.verify() if self.options.validate and plan else None
                if failure is not None:
                    transaction.rollback()
            if failure is None:
                return
            culprits = bisect_failures(plan, self._failure_of)
            if not culprits:
                raise PruneFailedError(f"the pruned model fails on the example inputs ({failure}); the step was "
                                       "undone and no single group could be blamed")
            reasons = []
            for (planned, _), reason in culprits:
                self.DG.freeze([planned.atom], f"pruning it broke the model: {reason}")
                reasons.append(f"{planned.root.describe()}: {reason}")
            warn(f"{len(culprits)} group(s) could not be pruned and are now kept: "
                 + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else ""))
            broken = {id(planned) for (planned, _), _ in culprits}
            self._groups = [g for g in self._groups if id(g) not in broken]

    def _failure_of(self, plan: Sequence) -> Optional[str]:
        """Why the model fails after pruning ``plan`` (undone afterwards), or None if it runs."""
        with self.DG.transaction(step=True) as transaction:
            try:
                self._prune_plan(plan)
                self.DG.end_step()
                return self.DG.verify()
            except PruningError as exc:
                return str(exc)
            finally:
                transaction.rollback()

    def _interactive(self, plan: Sequence) -> Iterator[Group]:
        """Yield the step's groups; the whole step is undone if the model fails afterwards."""
        scope = self.DG.transaction(step=True)
        transaction = scope.__enter__()
        error: Optional[BaseException] = None
        try:
            for planned, idxs in plan:
                if idxs:
                    yield self._calibrator.interactive_group(group_for(self.DG, planned, idxs))
            self._calibrator.after_step()
            self.DG.end_step()
            failure = self.DG.verify() if self.options.validate else None
            if failure is not None:
                transaction.rollback()
                raise PruneFailedError(f"after this interactive step the model fails on the example inputs "
                                       f"({failure}); every group of the step was restored")
        except GeneratorExit:
            transaction.commit()  # the caller stopped early: keep what it pruned
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            scope.__exit__(type(error) if error is not None else None, error, None)

    # -- sparse training (no-ops here; see the regularizing pruners) -------------------------
    def update_regularizer(self) -> None:
        """Refresh regularization targets; call at the start of each training epoch."""

    def regularize(self, model: Optional[nn.Module] = None, loss: Any = None, **kwargs: Any) -> None:
        """Add the sparsity regularizer's gradient to ``.grad``; call after ``loss.backward()``."""

    # -- history ---------------------------------------------------------------------------
    def pruning_history(self) -> List[Dict[str, Any]]:
        """Everything removed so far, in order; JSON-friendly."""
        return self.DG.pruning_history()

    def load_pruning_history(self, history: Sequence[Dict[str, Any]]) -> None:
        """Replay a history on this pruner's (unpruned) model."""
        self.DG.load_pruning_history(history)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(groups={len(self._groups)}, pruning_ratio={self.options.pruning_ratio}, "
                f"global_pruning={self.options.global_pruning}, step={self.current_step}/"
                f"{self.options.iterative_steps}, importance={type(self.importance).__name__})")


__all__ = ["BasePruner", "resolve_importance"]
