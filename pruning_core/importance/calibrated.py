"""Criteria scored from calibration statistics: structured Wanda, FLAP's fluctuation, and OBS.

Each scores a channel from every layer that consumes it (the "in" side of the
group): removing input channel ``j`` of a layer removes column ``j`` of its
weight, and how much that matters depends on what flows through the column.
Heads and other multi-position units are scored as units.

* ``wanda``: ``sum_i |W[i, j]| * ||X_j||`` (``||X_j||`` as an RMS over rows, so layers
  that see different numbers of rows compare).
* ``flap``: ``Var(X_j) * ||W[:, j]||²``, standardised per group (FLAP's
  fluctuation metric), so global ranking compares like with like.
* ``obs``: how much the layer's output error grows when the unit is removed and the
  layer is optimally refit (Optimal Brain Surgeon, as ZipLM and SlimGPT):
  ``tr(W_S ((C + λI)⁻¹_SS)⁻¹ W_Sᵀ)`` with ``C`` the input covariance (the refit has
  an intercept). Scores are in units of output mean squared error, so layers
  writing into the same stream compare directly.

A group that no layer consumes through its input (the query/key dims of
attention, whose product feeds a matmul) is scored from the output activations of
the layers producing it: the product of their per-channel RMS.

With a pruner, pass ``calibration=batches`` and statistics are collected for
you (again at every step). Alone, record them like :class:`ActivationImportance`::

    imp = tp.importance.create("flap")
    with imp.record(model):
        for batch in batches:
            model(batch)
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from torch import nn

from ..calibration.forms import linear_form
from ..calibration.statistics import CalibrationStatistics, LayerStatistics
from ..errors import ConfigurationError
from ..graph.channels import channel_view
from ..graph.group import Group
from ..graph.slots import Slot
from .base import GroupView, Importance, normalize, reduce_scores


class CalibratedImportance(Importance):
    """Base of the criteria that read :class:`~pruning_core.calibration.CalibrationStatistics`."""

    name = "calibrated"
    needs_gram = False

    def __init__(self, group_reduction: Optional[str] = "sum", normalizer: Optional[str] = "mean",
                 statistics: Optional[CalibrationStatistics] = None) -> None:
        super().__init__(group_reduction, normalizer, bias=False)
        self.statistics = statistics

    @contextlib.contextmanager
    def record(self, model: nn.Module) -> Iterator[CalibrationStatistics]:
        """Record statistics of every layer's input while the block runs batches through ``model``."""
        if self.statistics is None:
            self.statistics = CalibrationStatistics()
        with self.statistics.record(model, gram=self.needs_gram) as stats:
            yield stats

    def consumer_scores(self, view: GroupView, slot: Slot, units: torch.Tensor,
                        stats: LayerStatistics) -> Optional[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor:
        if self.statistics is None:
            raise ConfigurationError(
                f"importance {self.name!r} needs calibration statistics: pass calibration=batches to the pruner, "
                f"or run batches inside `with imp.record(model):`")
        view = GroupView(group)
        scores: List[torch.Tensor] = []
        consumers, silent = [], []
        producers: List[torch.Tensor] = []
        for slot, units in view.slot_units().values():
            if slot.is_param:
                continue
            owner = slot.target.owner
            if slot.kind == "in":
                consumers.append(slot)
                stats = self.statistics.get(owner, "in")
                if stats is None:
                    silent.append(slot.describe())
                    continue
                _check_size(stats, units, slot)
                found = self.consumer_scores(view, slot, units, stats)
                if found is not None:
                    scores.append(found)
            elif slot.kind == "out":
                stats = self.statistics.get(owner, "out")
                if stats is not None and stats.channels == units.numel():
                    found = view.position_scores(units, stats.rms)
                    if found is not None:
                        producers.append(found)
        if not consumers and producers:
            scores = [reduce_scores(producers, "prod")]
        if not scores:
            where = f"the layers consuming it ({', '.join(silent[:3])})" if silent else "its layers"
            raise ConfigurationError(
                f"importance {self.name!r} has no calibration statistics for the group rooted at "
                f"{group.root_slot.describe()}: {where} did not run on the calibration batches. Check that the "
                "batches reach them, or pass them in ignored_layers")
        return normalize(reduce_scores(scores, self.group_reduction), self.normalizer)

    @staticmethod
    def _column_stats(view: GroupView, slot: Slot, power: float) -> Optional[torch.Tensor]:
        """``sum_i |W[i, j]|^power`` for every input position ``j`` of the layer, over its in-side parameters."""
        total = None
        for member in view:
            if member.slot is not slot or member.name.endswith("bias"):
                continue
            tensor = channel_view(member.param.detach(), member.to_channels)
            n = tensor.shape[member.dim]
            if n != member.units.numel():
                continue
            flat = tensor.movedim(member.dim, 0).reshape(n, -1).abs().to(torch.float64)
            column = flat.pow(power).sum(1) if power != 1 else flat.sum(1)
            total = column if total is None else total + column
        return total


def _check_size(stats: LayerStatistics, units: torch.Tensor, slot: Slot) -> None:
    if stats.channels != units.numel():
        raise ConfigurationError(
            f"the calibration statistics of {slot.describe()} were recorded for {stats.channels} input channels, "
            f"but it has {units.numel()} now; record them again after each pruning step")


class WandaImportance(CalibratedImportance):
    """Structured Wanda: ``sum_i |W[i, j]| * RMS(X_j)`` from every consuming layer."""

    name = "wanda"

    def consumer_scores(self, view, slot, units, stats):
        columns = self._column_stats(view, slot, 1)
        if columns is None:
            return None
        return view.position_scores(units, columns * stats.rms.to(columns.device, torch.float64).cpu())


class FLAPImportance(CalibratedImportance):
    """FLAP's fluctuation metric: ``Var(X_j) * ||W[:, j]||²``, standardised per group by default."""

    name = "flap"

    def __init__(self, group_reduction: Optional[str] = "sum", normalizer: Optional[str] = "gaussian",
                 statistics: Optional[CalibrationStatistics] = None) -> None:
        super().__init__(group_reduction, normalizer, statistics)

    def consumer_scores(self, view, slot, units, stats):
        columns = self._column_stats(view, slot, 2)
        if columns is None:
            return None
        return view.position_scores(units, columns * stats.variance.to(columns.device, torch.float64).cpu())


class OBSImportance(CalibratedImportance):
    """Output error after removing a unit and optimally refitting the layer (needs the layer's linear form).

    :param damping: added to the covariance diagonal, as a fraction of its mean (1% by default).
    """

    name = "obs"
    needs_gram = True

    def __init__(self, group_reduction: Optional[str] = "sum", normalizer: Optional[str] = None,
                 statistics: Optional[CalibrationStatistics] = None, damping: float = 0.01) -> None:
        super().__init__(group_reduction, normalizer, statistics)
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or damping < 0:
            raise ConfigurationError(f"damping must be a number >= 0, got {damping!r}")
        self.damping = float(damping)

    def consumer_scores(self, view, slot, units, stats):
        owner = slot.target.owner
        form = linear_form(slot.handler, owner, slot.describe(), "importance 'obs'")
        if stats.gram is None or not stats.has_features:
            raise ConfigurationError(
                f"importance 'obs' needs the input Gram of {slot.describe()}"
                + (f", but {stats.problem}" if stats.problem else ", which was not recorded")
                + "; use wanda or flap for this model, or pass the layer in ignored_layers")
        groups, per = form.groups, form.features_per_channel
        weight = form.weight.to(torch.float64)
        covariance = stats.covariance().to(weight.device)
        channels = units.numel()
        if channels % groups or covariance.shape[0] != groups or covariance.shape[1] != channels // groups * per:
            return None
        per_group, rows = channels // groups, weight.shape[0] // groups
        scores = torch.zeros(view.num_channels, dtype=torch.float64)
        for g in range(groups):
            inverse = _damped_inverse(covariance[g], self.damping)
            feature_units = units[g * per_group:(g + 1) * per_group].repeat_interleave(per)
            _add_unit_errors(scores, feature_units, inverse, weight[g * rows:(g + 1) * rows])
        return scores.float()


def _damped_inverse(matrix: torch.Tensor, damping: float) -> torch.Tensor:
    scale = float(matrix.diagonal().mean().clamp_min(0))
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    jitter = damping * scale if scale > 0 else 1e-12
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
        jitter = max(jitter * 10, 1e-10 * (scale or 1.0))
    return torch.linalg.pinv(matrix + jitter * eye, hermitian=True)


def _add_unit_errors(scores: torch.Tensor, feature_units: torch.Tensor, inverse: torch.Tensor,
                     weight: torch.Tensor) -> None:
    """``scores[u] += tr(W_S (inverse_SS)⁻¹ W_Sᵀ)`` for the features ``S`` of each unit ``u``."""
    valid = torch.nonzero(feature_units >= 0).reshape(-1)
    if valid.numel() == 0:
        return
    owners = feature_units[valid]
    order = torch.argsort(owners, stable=True)
    valid, owners = valid[order], owners[order]
    ids, counts = torch.unique_consecutive(owners, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    for size in torch.unique(counts).tolist():
        chosen = torch.nonzero(counts == size).reshape(-1)
        index = valid[starts[chosen].unsqueeze(1) + torch.arange(size)].to(inverse.device)  # (U, s)
        blocks = inverse[index.unsqueeze(2), index.unsqueeze(1)]  # (U, s, s)
        columns = weight[:, index].permute(1, 2, 0)  # (U, s, rows)
        solved = torch.linalg.solve(blocks, columns)
        scores.index_add_(0, ids[chosen], (columns * solved).sum((1, 2)).cpu())


__all__ = ["CalibratedImportance", "WandaImportance", "FLAPImportance", "OBSImportance"]
