"""``OBDCImportance``: Torch-Pruning's optimal-brain-damage criterion with a per-sample Fisher diagonal.

Optimal Brain Damage estimates the loss increase of removing a weight as ``w^2 * H_ii / 2``.
Here, as in Torch-Pruning's ``OBDCImportance`` (after EigenDamage, Wang et al. 2019), the Hessian
diagonal is replaced by the empirical Fisher diagonal: the mean over samples of the squared
*per-sample* gradient of each weight. Per-sample gradients come from hooks on convolution and
linear layers (their inputs and the gradients of their outputs), so one backward pass over a
batch gives one estimate per sample. A channel scores the sum of ``w^2 * F`` over its output
weights.

Use it as in Torch-Pruning::

    imp = tp.importance.OBDCImportance()
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=0.5)
    imp._prepare_model(model, pruner)          # or imp.prepare(model)
    for x, y in calibration_batches:
        model.zero_grad()
        loss_fn(model(x), y).backward()
        imp.step()                             # accumulate the Fisher diagonal
    pruner.step()
    imp._rm_hooks(model); imp._clear_buffer()  # or imp.remove_hooks(); imp.reset()
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigurationError
from .base import GroupView, Importance, MemberTensor, normalize, reduce_scores

_CONV_WEIGHT_GRADS = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


def _per_sample_weight_grads(layer: nn.Module, inputs: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``(N, *weight.shape)``: the gradient of the loss with respect to the weight, sample by sample."""
    if isinstance(layer, nn.Linear):
        a = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
        g = grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1])
        return torch.einsum("nto,nti->noi", g, a)
    spatial = len(layer.kernel_size)
    grad_fn = _CONV_WEIGHT_GRADS[spatial]
    rows = []
    for n in range(inputs.shape[0]):
        rows.append(grad_fn(inputs[n:n + 1], layer.weight.shape, grad_out[n:n + 1], layer.stride, layer.padding,
                            layer.dilation, layer.groups))
    return torch.stack(rows)


def _per_sample_bias_grads(grad_out: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1]).sum(1)
    return grad_out.reshape(grad_out.shape[0], grad_out.shape[1], -1).sum(2)


class OBDCImportance(Importance):
    """Optimal Brain Damage with a per-sample (empirical) Fisher diagonal, as in Torch-Pruning.

    :param target_types: layer types whose output channels are scored (convolutions and
        linear layers; transposed convolutions are not).
    :param num_classes: linear layers with this many outputs are skipped, as Torch-Pruning
        skips the classifier.
    :param bias: also score biases.
    """

    name = "obdc"

    def __init__(self, group_reduction: Optional[str] = "mean", normalizer: Optional[str] = "mean",
                 bias: bool = False, target_types: Sequence[type] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear),
                 num_classes: int = 100) -> None:
        super().__init__(group_reduction, normalizer, bias)
        self.target_types = tuple(target_types)
        self.num_classes = num_classes
        self.eps = 1e-10
        self.steps = 0
        self._inputs: Dict[nn.Module, torch.Tensor] = {}
        self._grads: Dict[nn.Module, torch.Tensor] = {}
        self._fisher: Dict[int, torch.Tensor] = {}  # id(parameter) -> summed squared per-sample grads
        self._handles: List[Any] = []
        self._layers: List[nn.Module] = []

    # -- collecting statistics ---------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Hook every target layer of ``model`` so that :meth:`step` can read per-sample gradients."""
        self.remove_hooks()
        for module in model.modules():
            if isinstance(module, self.target_types) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
                self._layers.append(module)
                self._handles.append(module.register_forward_hook(self._watch))

    def _prepare_model(self, model: nn.Module, pruner: Any = None) -> None:
        """Torch-Pruning's name for :meth:`prepare` (the pruner argument is accepted and not needed)."""
        self.prepare(model)

    def _watch(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        """Keep the layer's input, and catch the gradient of its output during backward."""
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        if not output.requires_grad:
            return
        self._inputs[module] = args[0].detach()

        def keep_grad(grad: torch.Tensor) -> None:
            self._grads[module] = grad.detach()

        output.register_hook(keep_grad)

    @torch.no_grad()
    def step(self) -> None:
        """Add the squared per-sample gradients of the last backward pass to the Fisher estimate."""
        if not self._layers:
            raise ConfigurationError("OBDCImportance.step(): call imp.prepare(model) (Torch-Pruning: "
                                     "imp._prepare_model(model, pruner)) before the calibration passes")
        seen = False
        for layer in self._layers:
            inputs, grads = self._inputs.pop(layer, None), self._grads.pop(layer, None)
            if inputs is None or grads is None:
                continue
            seen = True
            samples = inputs.shape[0]
            # Per-sample gradients of a mean loss are 1/N of the sample's own; rescale as Torch-Pruning does.
            stats = [(layer.weight, _per_sample_weight_grads(layer, inputs.float(), grads.float()) * samples)]
            if layer.bias is not None:
                stats.append((layer.bias, _per_sample_bias_grads(grads.float(), layer) * samples))
            for param, per_sample in stats:
                squared = per_sample.pow(2).sum(0)
                key = id(param)
                if key in self._fisher and self._fisher[key].shape == squared.shape:
                    self._fisher[key] += squared
                else:
                    self._fisher[key] = squared
        if not seen:
            raise ConfigurationError("OBDCImportance.step(): no gradients were recorded; run the model and "
                                     "loss.backward() between prepare() and step()")
        self.steps += 1

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._layers = [], []
        self._inputs.clear()
        self._grads.clear()

    def _rm_hooks(self, model: Optional[nn.Module] = None) -> None:
        """Torch-Pruning's name for :meth:`remove_hooks`."""
        self.remove_hooks()

    def reset(self) -> None:
        """Forget the Fisher estimate (before a new pruning round)."""
        self._fisher.clear()
        self.steps = 0

    _clear_buffer = reset

    def adjust_fisher(self, group: Any, idxs: Sequence[int]) -> None:
        """Torch-Pruning keeps its estimate in step with pruned layers this way; here an estimate whose
        shape no longer matches its weight is ignored, so this is a no-op kept for compatibility."""

    # -- scoring ---------------------------------------------------------------------------------
    def members(self, view: GroupView):
        for member in super().members(view):
            owner = member.slot.target.owner
            if member.slot.kind != "out" or member.slot.is_param or not isinstance(owner, self.target_types):
                continue
            if isinstance(owner, nn.Linear) and owner.out_features == self.num_classes:
                continue
            yield member

    def member_scores(self, view: GroupView, member: MemberTensor) -> Optional[torch.Tensor]:
        fisher = self._fisher.get(id(member.param))
        if fisher is None or fisher.shape != member.param.shape:
            return None
        damage = member.param.detach().float().pow(2) * (fisher / max(1, self.steps) + self.eps)
        return view.unit_scores(member, damage, lambda t: t.sum((0, 2)))

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        if not self._fisher:
            raise ConfigurationError("OBDCImportance has no Fisher estimate: call imp.prepare(model), then "
                                     "loss.backward() and imp.step() for each calibration batch")
        view = GroupView(group)
        scores = [s for s in (self.member_scores(view, m) for m in self.members(view)) if s is not None]
        if not scores:
            # No convolution or linear output in this group: uniform scores leave the ranking to others.
            return torch.ones(view.num_channels)
        return normalize(reduce_scores(scores, self.group_reduction), self.normalizer)


__all__ = ["OBDCImportance"]
