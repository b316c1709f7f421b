"""Pruning algorithms beyond the base pruner: magnitude, random and three sparse-training regularizers."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..graph.dims import Atom
from ..importance.base import GroupView
from .base import BasePruner
from .planning import PlannedGroup, keep_count


class MagnitudePruner(BasePruner):
    """Magnitude pruning (Li et al., 2017): the base pruner with a weight-norm criterion by default."""

    default_importance = "l2"


class RandomPruner(BasePruner):
    """Random pruning: a baseline that removes uniformly chosen channels."""

    default_importance = "random"


def _grouped_elements(pruner: BasePruner, planned: PlannedGroup) -> Tuple[GroupView, List[Tuple[Any, torch.Tensor]]]:
    """A group's parameter tensors (with gradients) and which channel owns each of their elements."""
    view = GroupView(pruner.full_group(planned))
    found = []
    seen = set()
    for member in view:
        param = member.param
        if not isinstance(param, nn.Parameter) or param.grad is None or member.name.endswith("bias"):
            continue
        key = (id(param), member.dim)
        if key in seen:
            continue
        seen.add(key)
        owner = view.element_units(member)
        if owner is not None:
            found.append((param, owner))
    return view, found


class BNScalePruner(BasePruner):
    """Network slimming (Liu et al., 2017): L1 on BatchNorm scales during training, then prune small ones.

    :param reg: strength of the L1 penalty added by :meth:`regularize`.
    """

    default_importance = "bn_scale"

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-5,
                 **kwargs: Any) -> None:
        super().__init__(model, example_inputs, importance, **kwargs)
        self.reg = reg

    def _bn_layers(self) -> List[nn.Module]:
        layers = {}
        for planned in self._groups:
            for item in self.full_group(planned):
                owner = item.dep.target.owner
                if isinstance(owner, nn.modules.batchnorm._BatchNorm) and owner.weight is not None:
                    layers[id(owner)] = owner
        return list(layers.values())

    @torch.no_grad()
    def regularize(self, model: Optional[nn.Module] = None, loss: Any = None, reg: Optional[float] = None,
                   **kwargs: Any) -> None:
        strength = self.reg if reg is None else reg
        for layer in self._bn_layers():
            if layer.weight.grad is not None:
                layer.weight.grad.add_(strength * torch.sign(layer.weight.data))


class GroupNormPruner(BasePruner):
    """Group-level sparsity (the DepGraph paper): a group lasso over every parameter of each coupled channel.

    Channels with a smaller group norm get a stronger penalty, scaled by ``alpha``.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-4,
                 alpha: float = 4.0, **kwargs: Any) -> None:
        super().__init__(model, example_inputs, importance, **kwargs)
        self.reg = reg
        self.alpha = alpha

    @torch.no_grad()
    def regularize(self, model: Optional[nn.Module] = None, loss: Any = None, reg: Optional[float] = None,
                   **kwargs: Any) -> None:
        strength = self.reg if reg is None else reg
        reduced: Optional[List[torch.Tensor]] = None
        if _rank_context(self) is not None:  # norms averaged over the ranks first, in one collective
            squares = []
            for planned in self._groups:
                view, elements = _grouped_elements(self, planned)
                if elements:
                    squares.append(self._squares(elements, view.num_channels))
            reduced = _mean_over_ranks(self, squares)
        position = 0
        for planned in self._groups:  # one group at a time: element maps of large models are not all kept
            view, elements = _grouped_elements(self, planned)
            if not elements:
                continue
            if reduced is None:
                squares_of_group = self._squares(elements, view.num_channels)
            else:
                squares_of_group = reduced[position]
                position += 1
            norms = squares_of_group.sqrt() + 1e-12
            spread = norms.max() - norms.min()
            scale = self.alpha ** ((norms.max() - norms) / (spread + 1e-12)) if spread > 0 else torch.ones_like(norms)
            factor = strength * scale / norms
            for param, owner in elements:
                keep = owner >= 0
                grad = param.grad.view(-1)
                weight = param.detach().view(-1)
                idx = torch.nonzero(keep).reshape(-1).to(grad.device)
                grad.index_add_(0, idx, (factor[owner[keep]].to(grad.device, grad.dtype) * weight[idx]))

    @staticmethod
    def _squares(elements: List[Tuple[Any, torch.Tensor]], channels: int) -> torch.Tensor:
        """Each channel's sum of squared weights over the group's parameters."""
        squares = torch.zeros(channels)
        for param, owner in elements:
            keep = owner >= 0
            squares.index_add_(0, owner[keep], param.detach().reshape(-1).float().cpu()[keep].pow(2))
        return squares


def _rank_context(pruner: BasePruner) -> Any:
    from .sync import context

    return context(pruner)


def _mean_over_ranks(pruner: BasePruner, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """Group norms averaged over the ranks (identical replicas, as under DDP, are unchanged), in one collective."""
    from ..distributed import StateReducer

    found = _rank_context(pruner)
    if found is None:
        return tensors
    named = {f"{i:06d}": t for i, t in enumerate(tensors)}
    reduced = StateReducer(found).mean(named, f"{type(pruner).__name__} group norms")
    return [reduced[name] for name in sorted(named)]


class GrowingRegPruner(BasePruner):
    """Growing regularization (Wang et al., 2021): an L2 penalty that grows on the channels to be pruned.

    Call :meth:`update_regularizer` periodically (for example each epoch) to grow
    the penalty of the currently least important channels by ``delta_reg``.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-5,
                 delta_reg: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(model, example_inputs, importance, **kwargs)
        self.reg = reg
        self.delta_reg = delta_reg
        self._regs: Dict[Atom, torch.Tensor] = {}

    def _reg_for(self, planned: PlannedGroup) -> torch.Tensor:
        current = self._regs.get(planned.atom)
        if current is None or current.numel() != planned.current:
            current = torch.full((planned.current,), float(self.reg))
            self._regs[planned.atom] = current
        return current

    def update_regularizer(self) -> None:
        self.sync_statistics()  # every rank grows the penalty of the same channels
        for planned in self._groups:
            regs = self._reg_for(planned)
            keep, _ = keep_count(planned, planned.ratio, self.options)
            count = planned.current - keep
            if count <= 0:
                continue
            scores = self.estimate_importance(planned)
            regs[torch.argsort(scores, stable=True)[:count]] += self.delta_reg

    @torch.no_grad()
    def regularize(self, model: Optional[nn.Module] = None, loss: Any = None, **kwargs: Any) -> None:
        for planned in self._groups:
            regs = self._reg_for(planned)
            _, elements = _grouped_elements(self, planned)
            for param, owner in elements:
                keep = owner >= 0
                grad = param.grad.view(-1)
                idx = torch.nonzero(keep).reshape(-1).to(grad.device)
                grad.index_add_(0, idx, regs[owner[keep]].to(grad.device, grad.dtype) * param.detach().view(-1)[idx])


__all__ = ["MagnitudePruner", "RandomPruner", "BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]
