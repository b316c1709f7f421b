"""Gradient-based criteria: first-order Taylor and a diagonal Hessian (Fisher) estimate."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigurationError
from .base import GroupView, Importance, MemberTensor


class GroupTaylorImportance(Importance):
    """``|w * dL/dw|`` summed over each channel's parameters: the first-order change of the loss.

    Run ``loss.backward()`` on real data before scoring.

    :param multivariable: score a channel by ``|sum(w * g)|`` (its joint removal)
        instead of ``sum(|w * g|)``.
    """

    name = "taylor"

    def __init__(self, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 multivariable: bool = False, bias: bool = False) -> None:
        super().__init__(group_reduction, normalizer, bias)
        self.multivariable = multivariable

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        param = member.param
        if param.grad is None:
            if isinstance(param, nn.Parameter) and param.requires_grad:
                raise ConfigurationError(
                    f"{member.slot.describe()}: {member.name or 'parameter'} has no gradient; "
                    "call loss.backward() before scoring with GroupTaylorImportance")
            return None
        product = (param.detach() * param.grad.detach())
        if self.multivariable:
            summed = view.unit_scores(member, product, lambda t: t.sum((0, 2)))
            return None if summed is None else summed.abs()
        return view.unit_scores(member, product, lambda t: t.abs().sum((0, 2)))

    @torch.no_grad()
    def reduce_state(self, reducer: Any, model: nn.Module) -> None:
        """Average ``.grad`` over the ranks, in place, as DistributedDataParallel does (a no-op under DDP)."""
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        for name, value in reducer.mean(grads, "GroupTaylorImportance gradients").items():
            grads[name].copy_(value)


class GroupHessianImportance(Importance):
    """Optimal-brain-damage style ``w^2 * H_diag``, with ``H_diag`` the mean squared per-sample gradient.

    For each calibration sample: ``loss.backward(); imp.accumulate_grad(model)``, then
    ``imp.zero_grad()`` before the next pruning round.
    """

    name = "hessian"

    def __init__(self, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 bias: bool = False) -> None:
        super().__init__(group_reduction, normalizer, bias)
        self._accumulated: Dict[int, torch.Tensor] = {}
        self._counts: Dict[int, int] = {}

    def zero_grad(self) -> None:
        self._accumulated.clear()
        self._counts.clear()

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add the current gradients (squared) to the running estimate, then clear them."""
        for param in model.parameters():
            if param.grad is None:
                continue
            key = id(param)
            squared = param.grad.detach().pow(2)
            if key in self._accumulated and self._accumulated[key].shape == squared.shape:
                self._accumulated[key] += squared
                self._counts[key] += 1
            else:
                self._accumulated[key] = squared.clone()
                self._counts[key] = 1
            param.grad = None

    @torch.no_grad()
    def reduce_state(self, reducer: Any, model: nn.Module) -> None:
        """Sum the accumulated squared gradients and sample counts over the ranks.

        With nothing accumulated (scoring from ``.grad`` alone), average ``.grad`` instead, as
        DDP does: the square of the averaged gradient is what one process on all the data scores.
        """
        names = {id(p): name for name, p in model.named_parameters()}
        if not self._accumulated:
            GroupTaylorImportance.reduce_state(self, reducer, model)  # type: ignore[arg-type]
            return
        state: Dict[str, torch.Tensor] = {}
        for key, total in self._accumulated.items():
            if key in names:  # parameters pruning replaced since are left out (same on every rank)
                state[f"sum/{names[key]}"] = total
                state[f"count/{names[key]}"] = torch.tensor(float(self._counts[key]))
        summed = reducer.sum(state, "GroupHessianImportance accumulated gradients")
        for key in list(self._accumulated):
            if key in names:
                self._accumulated[key] = summed[f"sum/{names[key]}"]
                self._counts[key] = int(round(float(summed[f"count/{names[key]}"])))

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        key = id(member.param)
        if key in self._accumulated:
            hessian = self._accumulated[key] / self._counts[key]
        elif member.param.grad is not None:
            hessian = member.param.grad.detach().pow(2)
        else:
            if isinstance(member.param, nn.Parameter) and member.param.requires_grad:
                raise ConfigurationError(
                    f"{member.slot.describe()}: no accumulated gradients; call loss.backward() and "
                    "imp.accumulate_grad(model) for each calibration sample")
            return None
        if hessian.shape != member.param.shape:
            return None
        return view.unit_scores(member, member.param.detach().pow(2) * hessian, lambda t: t.sum((0, 2)))


__all__ = ["GroupTaylorImportance", "GroupHessianImportance"]
