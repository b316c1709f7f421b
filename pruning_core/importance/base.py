"""What every importance criterion shares: the channel-to-parameter map of a group, reductions, normalizers.

A criterion never asks which layer type it is looking at: it asks each group
member's handler which parameter slices a channel owns (``channel_params``), so a
custom or plugin handler gets scores exactly like a built-in one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from ..errors import ConfigurationError
from ..graph.channels import channel_view, slot_params
from ..graph.dims import current_size
from ..graph.positions import atom_offsets
from ..graph.group import Group
from ..graph.slots import Slot

REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate", None)
NORMALIZERS = ("mean", "max", "sum", "standarization", "gaussian", "lamp", None)


class MemberTensor(NamedTuple):
    """One parameter slice family of a group member, laid out with channels along ``dim``."""

    slot: Slot
    name: str
    param: torch.Tensor
    dim: int
    to_channels: Optional[Any]
    units: torch.Tensor  # for each position along ``dim``: the group channel it belongs to, or -1


class GroupView:
    """A group seen as ``num_channels`` units, with every parameter slice that belongs to each."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.num_channels = group.num_channels
        index = group.index
        self._members: List[MemberTensor] = []
        offset = 0
        lookups = []
        for atom, elems in group.selections:
            table = torch.full((atom.current_size,), -1, dtype=torch.long)
            table[elems] = torch.arange(offset, offset + elems.numel())
            lookups.append((atom, table))
            offset += elems.numel()
        seen = set()
        for atom, _ in group.selections:
            for slot in index.slots_of(atom):
                if slot.serial in seen:
                    continue
                seen.add(slot.serial)
                expr = index.expr(slot)
                units = torch.full((current_size(expr),), -1, dtype=torch.long)
                for other, table in lookups:
                    offsets = atom_offsets(expr, other)
                    if offsets is not None:  # the atom is whole parts of the slot: plain slices
                        for offset in offsets:
                            units[offset:offset + table.numel()] = table
                        continue
                    c = index.slot_coords(slot, other)
                    hit = c >= 0
                    units[hit] = table[c[hit]]
                names = _param_names(slot)
                for tensor, dim, to_channels in slot_params(slot):
                    self._members.append(MemberTensor(slot, names.get(id(tensor), ""), tensor, dim, to_channels,
                                                      units))

    def __iter__(self) -> Iterator[MemberTensor]:
        return iter(self._members)

    def unit_scores(self, member: MemberTensor, tensor: torch.Tensor,
                    per_position: Callable[[torch.Tensor], torch.Tensor]) -> Optional[torch.Tensor]:
        """Sum ``per_position`` over each unit's positions.

        ``per_position`` gets the tensor as ``(before, positions, after)`` (a view, no copy, for
        contiguous tensors) and returns one value per position.
        """
        view = channel_view(tensor, member.to_channels)
        dim = member.dim
        n = view.shape[dim]
        if n != member.units.numel():
            return None
        before = math.prod(view.shape[:dim])
        stat = per_position(view.reshape(before, n, -1)).float().to("cpu")
        keep = member.units >= 0
        scores = torch.zeros(self.num_channels, dtype=stat.dtype)
        scores.index_add_(0, member.units[keep], stat[keep])
        return scores

    def slot_units(self) -> Dict[int, Tuple[Slot, torch.Tensor]]:
        """Slot serial -> (slot, unit of each position), for criteria that score slots, not parameters."""
        return {m.slot.serial: (m.slot, m.units) for m in self._members}

    def position_scores(self, units: torch.Tensor, values: torch.Tensor) -> Optional[torch.Tensor]:
        """Sum a per-position score vector into per-unit scores."""
        if values.numel() != units.numel():
            return None
        keep = units >= 0
        scores = torch.zeros(self.num_channels, dtype=torch.float32)
        scores.index_add_(0, units[keep], values.float().cpu()[keep])
        return scores

    def element_units(self, member: MemberTensor) -> Optional[torch.Tensor]:
        """For each element of ``member.param`` (flattened): the group channel that owns it, or -1."""
        param = member.param
        flat = torch.arange(param.numel()).reshape(param.shape)
        view = channel_view(flat, member.to_channels)
        if view.shape[member.dim] != member.units.numel():
            return None
        rows = view.movedim(member.dim, 0).reshape(view.shape[member.dim], -1)
        owner = torch.full((param.numel(),), -1, dtype=torch.long)
        owner[rows.reshape(-1)] = member.units.repeat_interleave(rows.shape[1])
        return owner

    def unit_vectors(self, member: MemberTensor, tensor: torch.Tensor) -> Optional[torch.Tensor]:
        """Each unit's parameters as one flat vector: ``(num_channels, features)``."""
        view = channel_view(tensor, member.to_channels)
        if view.shape[member.dim] != member.units.numel():
            return None
        flat = view.movedim(member.dim, 0).reshape(view.shape[member.dim], -1).float().cpu()
        keep = member.units >= 0
        order = torch.argsort(member.units[keep], stable=True)
        rows = flat[keep][order]
        if rows.shape[0] % self.num_channels:
            return None
        return rows.reshape(self.num_channels, -1)


def _param_names(slot: Slot) -> Dict[int, str]:
    owner = slot.target.owner
    if slot.is_param:
        return {id(getattr(owner, slot.target.attr)): slot.target.attr}
    names = {id(t): n for n, t in owner._parameters.items() if t is not None}
    if len(names) < 2 or owner._modules:
        names = {id(t): n for n, t in list(owner.named_parameters()) + list(owner.named_buffers())}
    return names


def reduce_scores(scores: List[torch.Tensor], reduction: Optional[str]) -> Optional[torch.Tensor]:
    """Combine per-member scores of one group.

    ``"first"`` keeps the first member's scores (the root layer's), ``"gate"`` the last
    member's, as in Torch-Pruning (a gate placed after the layers it controls). With ``None``
    nothing is combined: the result is the ``(members, channels)`` stack of every member's
    scores, as Torch-Pruning returns it.
    """
    if not scores:
        return None
    stacked = torch.stack(scores)
    if reduction is None:
        return stacked
    if reduction == "mean":
        return stacked.mean(0)
    if reduction == "sum":
        return stacked.sum(0)
    if reduction == "max":
        return stacked.max(0).values
    if reduction == "prod":
        return stacked.prod(0)
    if reduction == "first":
        return stacked[0]
    if reduction == "gate":
        return stacked[-1]
    raise ConfigurationError(f"group_reduction must be one of {REDUCTIONS}, got {reduction!r}")


def normalize(scores: torch.Tensor, normalizer: Optional[str]) -> torch.Tensor:
    """Make scores of different groups comparable (for global pruning)."""
    if normalizer is None:
        return scores
    if normalizer == "mean":
        return scores / (scores.mean() + 1e-12)
    if normalizer == "max":
        return scores / (scores.max() + 1e-12)
    if normalizer == "sum":
        return scores / (scores.sum() + 1e-12)
    if normalizer == "standarization":
        return (scores - scores.min()) / (scores.max() - scores.min() + 1e-12)
    if normalizer == "gaussian":
        return (scores - scores.mean()) / (scores.std() + 1e-12) if scores.numel() > 1 else scores * 0
    if normalizer == "lamp":
        return lamp_transform(scores)
    raise ConfigurationError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def lamp_transform(scores: torch.Tensor) -> torch.Tensor:
    """LAMP: each score divided by the sum of all scores not smaller than it."""
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    tail_sums = torch.flip(torch.cumsum(torch.flip(sorted_scores, [0]), 0), [0])
    out = torch.empty_like(scores)
    out[order] = sorted_scores / (tail_sums + 1e-12)
    return out


class Importance:
    """Base class of importance criteria: ``imp(group)`` returns one score per group channel.

    Higher means more important; pruners remove the lowest. Subclasses
    implement :meth:`member_scores` (one score vector per parameter slice) or
    override ``__call__`` entirely.
    """

    name = "importance"

    def __init__(self, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 bias: bool = False) -> None:
        if group_reduction not in REDUCTIONS:
            raise ConfigurationError(f"group_reduction must be one of {REDUCTIONS}, got {group_reduction!r}")
        if normalizer not in NORMALIZERS:
            raise ConfigurationError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.bias = bias

    def members(self, view: GroupView) -> Iterator[MemberTensor]:
        for member in view:
            if not self.bias and member.name.endswith("bias"):
                continue
            yield member

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor:
        view = GroupView(group)
        scores = [s for s in (self.member_scores(view, m) for m in self.members(view)) if s is not None]
        reduced = reduce_scores(scores, self.group_reduction)
        if reduced is None:
            from ..errors import GraphError

            raise GraphError(
                f"{type(self).__name__} found no parameters to score in the group rooted at "
                f"{group.root_slot.describe()}; give its handlers a channel_params(layer, side) method")
        if reduced.ndim == 2 and self.normalizer == "lamp":  # unreduced: LAMP ranks within each member
            return torch.stack([normalize(row, self.normalizer) for row in reduced])
        return normalize(reduced, self.normalizer)
