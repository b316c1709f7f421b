"""Weight-magnitude criteria: group L-p norms, LAMP, FPGM and BatchNorm scales."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import GroupView, Importance, MemberTensor, lamp_transform, normalize, reduce_scores


class GroupMagnitudeImportance(Importance):
    """Sum of ``|w|^p`` over every parameter slice a channel owns, across the whole group.

    :param p: the norm's exponent (1 for L1, 2 for L2).
    :param group_reduction: how member scores combine: "mean", "sum", "max", "prod", "first".
    :param normalizer: how a group's scores are rescaled before global ranking.
    :param bias: also count biases.
    """

    name = "magnitude"

    def __init__(self, p: float = 2, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 bias: bool = False, target_types: Optional[tuple] = None) -> None:
        super().__init__(group_reduction, normalizer, bias)
        self.p = p
        self.target_types = tuple(target_types) if target_types else None

    def members(self, view: GroupView):
        for member in super().members(view):
            if self.target_types is None or isinstance(member.slot.target.owner, self.target_types):
                yield member

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        return view.unit_scores(member, member.param.detach(), lambda t: _power_sum(t, self.p))


def _power_sum(blocks: torch.Tensor, p: float) -> torch.Tensor:
    """``sum |x|^p`` per position of a ``(before, positions, after)`` tensor.

    Reduces the contiguous trailing dim first; when there is none (a linear
    layer's input side), sums rows of ``|x|^p`` along the leading dim, which is
    vectorised across positions.
    """
    blocks = blocks.float()
    if blocks.shape[2] == 1:
        rows = blocks[:, :, 0]
        total = torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
        # Row chunks keep each temporary about a megabyte, so it stays in cache.
        step = max(1, (1 << 18) // max(1, rows.shape[1]))
        for chunk in rows.split(step):
            total += (chunk.square() if p == 2 else chunk.abs().pow(p)).sum(0)
        return total
    return torch.linalg.vector_norm(blocks, ord=p, dim=2).pow(p).sum(0)


MagnitudeImportance = GroupMagnitudeImportance


class LAMPImportance(GroupMagnitudeImportance):
    """Layer-adaptive magnitude pruning: magnitude scores turned into LAMP scores, comparable across layers."""

    name = "lamp"

    def __init__(self, p: float = 2, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "lamp",
                 bias: bool = False) -> None:
        super().__init__(p, group_reduction, normalizer, bias)


class FPGMImportance(Importance):
    """Filter pruning via the geometric median: a channel whose weights are close to all
    others is redundant. Score = summed distance to the other channels of the same tensor."""

    name = "fpgm"

    def __init__(self, p: float = 2, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 bias: bool = False) -> None:
        super().__init__(group_reduction, normalizer, bias)
        self.p = p

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        if member.param.ndim < 2:
            return None
        vectors = view.unit_vectors(member, member.param.detach())
        if vectors is None:
            return None
        return torch.cdist(vectors, vectors, p=self.p).sum(1)


class BNScaleImportance(Importance):
    """``|gamma|`` of the BatchNorm layers in the group (network slimming)."""

    name = "bn_scale"

    def __init__(self, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean") -> None:
        super().__init__(group_reduction, normalizer, bias=False)

    def members(self, view: GroupView):
        for member in super().members(view):
            if isinstance(member.slot.target.owner, nn.modules.batchnorm._BatchNorm) and member.name == "weight":
                yield member

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        return view.unit_scores(member, member.param.detach(), lambda t: t.abs().sum((0, 2)))

    @torch.no_grad()
    def __call__(self, group):
        view = GroupView(group)
        scores = [s for s in (self.member_scores(view, m) for m in self.members(view)) if s is not None]
        if not scores:
            # No BatchNorm in this group: fall back to uniform scores so ranking is by other groups.
            return torch.ones(view.num_channels)
        return normalize(reduce_scores(scores, self.group_reduction), self.normalizer)


__all__ = ["GroupMagnitudeImportance", "MagnitudeImportance", "LAMPImportance", "FPGMImportance",
           "BNScaleImportance", "lamp_transform"]
