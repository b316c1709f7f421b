"""Activation statistics gathered over as many calibration batches as the user feeds."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..graph import handlers as hv
from ..graph.trace import iter_tensors
from .base import GroupView, Importance, normalize, reduce_scores


class ActivationImportance(Importance):
    """Mean ``|a|^p`` of each output channel over every calibration batch seen.

    Statistics are running sums with element counts, so ten batches count as
    ten batches (not only the last one)::

        imp = tp.importance.ActivationImportance()
        with imp.record(model):
            for images, _ in calibration_loader:
                model(images)
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=0.5)

    After pruning, record again before scoring the next step.
    """

    name = "activation"

    def __init__(self, p: float = 1, group_reduction: Optional[str] = "mean",
                 normalizer: Optional[str] = "mean") -> None:
        super().__init__(group_reduction, normalizer, bias=False)
        self.p = p
        self._sums: Dict[int, torch.Tensor] = {}
        self._counts: Dict[int, int] = {}
        self._handles: List[Any] = []
        self.batches = 0

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self.batches = 0

    def register(self, model: nn.Module) -> None:
        """Start recording on every layer that has a handler."""
        from .._plugins import get_hub

        registry = get_hub().handlers()
        root_hook = model.register_forward_hook(lambda *args: self._count_batch())
        self._handles.append(root_hook)
        for module in model.modules():
            spec = registry.lookup(type(module))
            if spec is None:
                continue
            handler = hv.specialize(spec.handler, module)
            self._handles.append(module.register_forward_hook(self._make_hook(handler), with_kwargs=True))

    def remove(self) -> None:
        """Stop recording (statistics are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def record(self, model: nn.Module) -> Iterator["ActivationImportance"]:
        self.register(model)
        try:
            yield self
        finally:
            self.remove()

    def _count_batch(self) -> None:
        self.batches += 1

    def _make_hook(self, handler: Any):
        def hook(module: nn.Module, args: Tuple, kwargs: Dict, output: Any) -> None:
            inputs = list(iter_tensors(args)) + list(iter_tensors(kwargs))
            outputs = list(iter_tensors(output))
            try:
                _, links = hv.tensor_links(handler, module, inputs, outputs, type(module).__name__)
            except Exception:
                return
            for link in links:
                if link.repeat != 1 or link.side == "in":
                    continue
                tensor = outputs[link.index].detach()
                dims = [d for d in range(tensor.ndim) if d != link.dim]
                total = tensor.abs().pow(self.p).float().sum(dim=dims).cpu()
                count = tensor.numel() // max(1, tensor.shape[link.dim])
                key = id(module)
                if key in self._sums and self._sums[key].shape == total.shape:
                    self._sums[key] += total
                    self._counts[key] += count
                else:
                    self._sums[key] = total
                    self._counts[key] = count
                break
        return hook

    @torch.no_grad()
    def reduce_state(self, reducer: Any, model: nn.Module) -> None:
        """Sum the activation statistics, element counts and batch counts over the ranks."""
        names = {id(m): name for name, m in model.named_modules()}
        state: Dict[str, torch.Tensor] = {"batches": torch.tensor(float(self.batches))}
        for key, total in self._sums.items():
            if key in names:
                state[f"sum/{names[key]}"] = total
                state[f"count/{names[key]}"] = torch.tensor(float(self._counts[key]))
        summed = reducer.sum(state, "ActivationImportance statistics")
        self.batches = int(round(float(summed["batches"])))
        for key in list(self._sums):
            if key in names:
                self._sums[key] = summed[f"sum/{names[key]}"]
                self._counts[key] = int(round(float(summed[f"count/{names[key]}"])))

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        view = GroupView(group)
        scores = []
        for slot, units in view.slot_units().values():
            if slot.kind != "out" or slot.is_param:
                continue
            key = id(slot.target.owner)
            if key not in self._sums:
                continue
            mean = self._sums[key] / max(1, self._counts[key])
            found = view.position_scores(units, mean)
            if found is not None:
                scores.append(found)
        if not scores:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"no activation statistics for the group rooted at {group.root_slot.describe()}; "
                "feed calibration batches inside `with imp.record(model):` (again after each pruning step)")
        return normalize(reduce_scores(scores, self.group_reduction), self.normalizer)


__all__ = ["ActivationImportance"]
