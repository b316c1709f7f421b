"""What a pruner does with calibration: collect statistics before each step, compensate before each group goes.

The pruner calls three methods: :meth:`Calibrator.before_step` (statistics for the
step's groups, from one pass over the calibration batches), :meth:`Calibrator.compensate`
(just before a group is pruned) and :meth:`Calibrator.sequential_walk` (with
sequential calibration, the step is done block by block; see ``sequential.py``).
"""

from __future__ import annotations

import collections
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigurationError, PruningWarning
from ..graph.group import Group
from ..graph.record import ensure_record
from . import batches as runs
from ..graph import handlers as hv
from .forms import FORM_METHOD, has_linear_form, linear_form
from .statistics import CalibrationStatistics, Request

if TYPE_CHECKING:  # pragma: no cover
    from ..pruner.base import BasePruner

DEFAULT_DAMPING = 0.01


class Calibrator:
    """Statistics and compensation for one pruner."""

    def __init__(self, pruner: "BasePruner") -> None:
        from ..compensation import check_method
        from ..importance.calibrated import CalibratedImportance

        self.pruner = pruner
        options = pruner.options
        self.method = check_method(options.compensation)
        self.damping = DEFAULT_DAMPING if options.damping is None else options.damping
        importance = pruner.importance
        self.criterion = importance if isinstance(importance, CalibratedImportance) else None
        if self.criterion is not None and options.damping is not None and hasattr(self.criterion, "damping"):
            self.criterion.damping = self.damping
        self.used = self.criterion is not None or self.method is not None
        self.batches = runs.reiterable(options.calibration) if options.calibration is not None else None
        if self.used and self.batches is None and (self.method is not None or self.criterion.statistics is None):
            wanted = f"compensation={self.method!r}" if self.method else f"importance {self.criterion.name!r}"
            raise ConfigurationError(f"{wanted} needs calibration data: pass calibration=[batch, ...] (batches in "
                                     "the form of example_inputs) to the pruner")
        if self.batches is not None and not self.used:
            warnings.warn(f"calibration is not used by importance {type(importance).__name__} without "
                          "compensation; pass importance='wanda', 'flap' or 'obs', or compensation='bias'/'lstsq'",
                          PruningWarning, stacklevel=4)
        self.forward = runs.make_forward(options.forward_fn, pruner.example_inputs)
        self.stats: Optional[CalibrationStatistics] = None
        self._base = 0  # DG.history length when the statistics were taken
        self._log: List[Dict[Any, torch.Tensor]] = []  # (layer id, side) -> channels each group removed
        self._warned_stale = False
        self._reported: set = set()
        self._tied = _tied_parameters(pruner.model)
        self.blocks = self._choose_blocks(options.sequential)

    # -- statistics ---------------------------------------------------------------------------
    @property
    def needs_gram(self) -> bool:
        return self.method == "lstsq" or (self.criterion is not None and self.criterion.needs_gram)

    @property
    def needs_forms(self) -> bool:
        return self.method is not None or self.needs_gram

    def requests(self, planned_groups: List[Any]) -> List[Request]:
        """The layers whose input channels these groups remove (or, for groups nothing consumes through its
        input, the layers producing them), with their linear forms where compensation or obs needs them."""
        found: Dict[Any, Request] = {}
        for planned in planned_groups:
            consumers, producers = [], []
            for item in self.pruner.full_group(planned):
                slot = item.dep.slot
                if not slot.is_param:
                    (consumers if slot.kind == "in" else producers).append(slot)
            for slot in consumers:
                owner = slot.target.owner
                if (id(owner), "in") in found:
                    continue
                qualname = self.pruner.DG.name_of(owner) or slot.describe()
                form = None
                if self.criterion is not None and self.criterion.needs_gram:  # obs cannot score without it
                    form = linear_form(slot.handler, owner, qualname, f"importance {self.criterion.name!r}")
                elif self.method is not None:  # compensation leaves such a layer as it is (see _report)
                    form = getattr(slot.handler, FORM_METHOD, lambda layer: None)(owner)
                found[(id(owner), "in")] = Request(owner, slot.handler, qualname, "in", form,
                                                   self.needs_gram and form is not None)
            if not consumers and self.criterion is not None:
                for slot in producers:
                    owner = slot.target.owner
                    found.setdefault((id(owner), "out"), Request(owner, slot.handler, slot.describe(), "out"))
        return list(found.values())

    def collect(self, planned_groups: List[Any], label: str = "calibration",
                stop_after: Optional[nn.Module] = None, runner: Optional[Callable[[], None]] = None,
                root: Optional[nn.Module] = None) -> CalibrationStatistics:
        """One pass over the calibration batches, recording what ``planned_groups`` need.

        ``runner`` replaces the pass over the whole model (streaming runs one block on cached
        inputs); ``root`` is then the module it calls once per batch.
        """
        stats = CalibrationStatistics()
        requests = self.requests(planned_groups)
        handles = []
        if stop_after is not None:
            handles.append(stop_after.register_forward_hook(_stop))
        try:
            with stats.record(root if root is not None else self.pruner.model, requests):
                if runner is not None:
                    runner()
                else:
                    runs.run(self.pruner.model, self.batches, self.forward, label)
        finally:
            for handle in handles:
                handle.remove()
        from ..pruner import sync

        sync.reduce_calibration(self.pruner, stats)  # under torch.distributed: the sums of every rank
        self._use(stats)
        self._report(requests, stats)
        return stats

    def _report(self, requests: List[Request], stats: CalibrationStatistics) -> None:
        """Warn once about layers compensation has to leave as they are, and why."""
        if self.method is None:
            return
        reasons = []
        for request in requests:
            if request.side != "in" or request.qualname in self._reported:
                continue
            found = stats.get(request.module)
            if request.form is None:
                name = hv.handler_name(request.handler)
                why = (f"{name}.{FORM_METHOD}(layer) returned None for it" if has_linear_form(request.handler)
                       else f"{name} has no {FORM_METHOD}(layer)")
            elif found is not None and found.problem:
                why = found.problem
            else:
                continue
            self._reported.add(request.qualname)
            reasons.append(f"{request.qualname} ({type(request.module).__name__}): {why}")
        if reasons:
            warnings.warn(f"compensation={self.method!r} leaves {len(reasons)} layer(s) uncompensated: "
                          + "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
                          + f". A handler adds support with {FORM_METHOD}(layer) returning a LinearForm",
                          PruningWarning, stacklevel=5)

    def _use(self, stats: Optional[CalibrationStatistics]) -> None:
        self.stats = stats
        self._base = len(self.pruner.DG.history)
        self._log = []
        if self.criterion is not None and self.batches is not None:
            self.criterion.statistics = stats

    def before_step(self, interactive: bool = False) -> None:
        """Fresh statistics for the coming step (the model changed since the last one)."""
        if not self.used or self.batches is None:
            return
        self._use(None)  # free the previous step's statistics before collecting new ones
        if self.blocks and not interactive:
            return  # the sequential walk collects them block by block
        self.collect([g for g in self.pruner.groups if g.current > 0])

    def after_step(self) -> None:
        """Free the step's statistics (they describe the model before the step)."""
        if self.batches is not None:
            self._use(None)

    def sequential_walk(self) -> Optional[Callable[[], List[Any]]]:
        """With sequential calibration on, the function that runs the step block by block; else None."""
        if not self.blocks or not self.used or self.batches is None:
            return None
        from .sequential import SequentialWalk

        return SequentialWalk(self, self.blocks).run

    # -- compensation --------------------------------------------------------------------------
    def compensate(self, group: Group) -> None:
        """Refit the layers that consume ``group``'s channels, just before the group is pruned."""
        if self.method is None or self.stats is None:
            return
        from ..compensation import compensated

        done = len(self.pruner.DG.history) - self._base
        if done < 0:
            return  # the model was put back to before these statistics (a retried step): nothing to match
        if done > len(self._log):
            if not self._warned_stale:
                self._warned_stale = True
                warnings.warn("channels were removed without compensation since calibration (a group pruned "
                              "outside the pruner, or with explicit idxs); the rest of this step is not "
                              "compensated", PruningWarning, stacklevel=3)
            return
        del self._log[done:]
        entry: Dict[Any, torch.Tensor] = {}
        consumers = []
        for item in group:
            slot = item.dep.slot
            if slot.is_param or slot.kind not in ("in", "out"):
                continue
            owner = slot.target.owner
            stats = self.stats.get(owner, "in")
            if stats is None or stats.form is None:
                continue
            entry[(id(owner), slot.kind)] = torch.as_tensor(item.idxs, dtype=torch.long)
            if slot.kind == "in":
                consumers.append((slot, owner, stats))
        for slot, owner, stats in consumers:
            in_map = self._channel_map(owner, "in", stats.channels)
            out_map = self._channel_map(owner, "out", stats.form.out_channels)
            if id(owner) in self._tied or not stats.has_features:
                continue
            form = linear_form(slot.handler, owner, slot.describe(), f"compensation={self.method!r}")
            if in_map.numel() != int(slot.handler.get_in_channels(owner)):
                continue  # pruned since calibration in a way this log does not know
            result = compensated(stats.form, form, stats, entry[(id(owner), "in")], in_map, out_map,
                                 self.method, self.damping)
            if result is not None:
                ensure_record(owner)  # a created bias must show as a change when the model is saved
                form.write(*result)
        self._log.append(entry)

    def _channel_map(self, owner: nn.Module, side: str, size: int) -> torch.Tensor:
        """Original index (when the statistics were taken) of each current channel of ``side``."""
        mapping = torch.arange(size)
        for entry in self._log:
            removed = entry.get((id(owner), side))
            if removed is not None:
                keep = torch.ones(mapping.numel(), dtype=torch.bool)
                keep[removed] = False
                mapping = mapping[keep]
        return mapping

    def interactive_group(self, group: Group) -> Group:
        """``group`` whose ``prune()`` compensates first (when compensation is on)."""
        if self.method is None:
            return group
        return CompensatedGroup(group, self)

    # -- sequential set-up -------------------------------------------------------------------------
    def _choose_blocks(self, sequential: Optional[bool]) -> List[nn.Module]:
        if sequential is False or not self.used:
            if sequential and not self.used:
                raise ConfigurationError("sequential=True calibrates block by block, which only the calibrated "
                                         "criteria (wanda, flap, obs) and compensation use; pass one of them")
            return []
        from .sequential import find_blocks

        blocks = find_blocks(self.pruner.model, generic=bool(sequential))
        if sequential and not blocks:
            raise ConfigurationError(
                f"sequential=True needs a stack of repeated blocks, but no plugin names one for "
                f"{type(self.pruner.model).__name__} and it has no list of same-class modules; pass sequential=False")
        return blocks


class CompensatedGroup(Group):
    """A group handed out by an interactive step: ``prune()`` refits its consumers first."""

    def __init__(self, group: Group, calibrator: Calibrator) -> None:
        super().__init__(group.index, group.remover, group.selections, group.root_slot)
        self._calibrator = calibrator

    def prune(self, idxs: Optional[Any] = None) -> None:
        if idxs is None:
            self._calibrator.compensate(self)
        super().prune(idxs)


def _stop(module: nn.Module, args: Any, output: Any) -> None:
    raise runs.StopForward()


def _tied_parameters(model: nn.Module) -> set:
    """Modules holding a parameter another module also holds: refitting one copy would untie them."""
    owners: Dict[int, List[nn.Module]] = collections.defaultdict(list)
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                owners[id(param)].append(module)
    return {id(m) for mods in owners.values() if len(mods) > 1 for m in mods}


__all__ = ["Calibrator", "CompensatedGroup", "DEFAULT_DAMPING"]
