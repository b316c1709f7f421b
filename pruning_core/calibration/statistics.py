"""Calibration statistics of layer inputs: running float64 sums, collected through the layer handlers.

For each requested layer, a forward hook finds the tensor that carries the layer's
input channels (the handler's ``tensor_links``, as tracing does) and adds, per
channel, the count, sum and sum of squares. Layers whose handler has a
``linear_form`` can also accumulate the mean of every feature and the Gram
matrix ``XᵀX`` of their unfolded input (one per group for grouped convolutions).
Every sum is float64 whatever the model's dtype, so many batches add up exactly
as one batch would (up to float64 rounding)::

    stats = CalibrationStatistics()
    with stats.record(model, gram=True):
        for batch in batches:
            model(batch)
    stats.get(model.fc).variance
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..graph import handlers as hv
from ..graph.trace import iter_tensors
from .forms import LinearForm

_CHUNK_ELEMENTS = 1 << 24  # rows x features per float64 chunk of a Gram update (128 MB)


@dataclasses.dataclass
class Request:
    """What to record for one layer: ``side`` "in" (its input channels) or "out" (its output channels)."""

    module: nn.Module
    handler: Any
    qualname: str = ""
    side: str = "in"
    form: Optional[LinearForm] = None  # given: also feature means (and the Gram if ``gram``)
    gram: bool = False


class LayerStatistics:
    """Running sums over every row (sample x position) one layer saw during calibration."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.qualname = request.qualname
        self.channels: Optional[int] = None
        self.rows = 0
        self.sum: Optional[torch.Tensor] = None
        self.sum_sq: Optional[torch.Tensor] = None
        self.form = request.form
        self.feature_rows = 0
        self.feature_sum: Optional[torch.Tensor] = None  # (groups, features)
        self.gram: Optional[torch.Tensor] = None  # (groups, features, features)
        self.problem: Optional[str] = None  # why features could not be recorded
        self.checked = False

    # -- per-channel moments --------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(1, self.rows)

    @property
    def second_moment(self) -> torch.Tensor:
        return self.sum_sq / max(1, self.rows)

    @property
    def variance(self) -> torch.Tensor:
        """Fluctuation of each channel across rows (population variance)."""
        return (self.second_moment - self.mean.pow(2)).clamp_min(0)

    @property
    def rms(self) -> torch.Tensor:
        """``||X_j||_2 / sqrt(rows)``: the norm Wanda uses, independent of how many rows were seen."""
        return self.second_moment.sqrt()

    # -- features of the linear form ----------------------------------------------------------
    @property
    def has_features(self) -> bool:
        return self.feature_sum is not None and self.problem is None

    def feature_mean(self) -> torch.Tensor:
        return self.feature_sum / max(1, self.feature_rows)

    def feature_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` per group, ``(groups, F, F)``."""
        return self.gram / max(1, self.feature_rows)

    def covariance(self) -> torch.Tensor:
        """``E[(x - mu)(x - mu)ᵀ]`` per group."""
        mean = self.feature_mean()
        return self.feature_moment() - mean.unsqueeze(2) * mean.unsqueeze(1)

    # -- accumulation ---------------------------------------------------------------------------
    def add_channels(self, x: torch.Tensor, dim: int) -> None:
        channels = x.shape[dim]
        rows = x.detach().movedim(dim, -1).reshape(-1, channels).to(torch.float64)
        if self.sum is None or self.channels != channels:
            self.channels, self.rows = channels, 0
            self.sum = torch.zeros(channels, dtype=torch.float64, device=rows.device)
            self.sum_sq = torch.zeros_like(self.sum)
        self.sum += rows.sum(0)
        self.sum_sq += rows.pow(2).sum(0)
        self.rows += rows.shape[0]

    def add_features(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> None:
        form = self.form
        if form is None or self.problem is not None:
            return
        feats = form.features(x.detach())
        if not self.checked:
            self.problem = _check_form(form, feats, y, x.dtype)
            self.checked = True
            if self.problem is not None:
                return
        groups, rows, width = feats.shape
        if self.feature_sum is None:
            self.feature_sum = torch.zeros(groups, width, dtype=torch.float64, device=feats.device)
            if self.request.gram:
                self.gram = torch.zeros(groups, width, width, dtype=torch.float64, device=feats.device)
        step = max(1, _CHUNK_ELEMENTS // max(1, groups * width))
        for start in range(0, rows, step):
            chunk = feats[:, start:start + step].to(torch.float64)
            self.feature_sum += chunk.sum(1)
            if self.gram is not None:
                self.gram.baddbmm_(chunk.transpose(1, 2), chunk)
        self.feature_rows += rows


def _check_form(form: LinearForm, feats: torch.Tensor, y: Optional[torch.Tensor], dtype: torch.dtype
                ) -> Optional[str]:
    """Whether the form reproduces the layer's real output on the first rows (a subclass may compute more)."""
    if y is None:
        return "its output could not be found to check the linear form against"
    try:
        real = form.outputs(y.detach())
    except Exception as exc:  # a layout the form does not know
        return f"its linear form cannot read its output ({type(exc).__name__}: {exc})"
    groups, rows, width = feats.shape
    if real.shape[0] != rows or real.shape[1] != form.out_channels or width != form.features_per_group \
            or groups != form.groups:
        return (f"its linear form gives {rows} rows x {form.out_channels} outputs but the layer returned "
                f"{tuple(real.shape)} (a subclass that computes its output differently?)")
    take = min(rows, 64)
    weight = form.weight.to(torch.float64)
    per_group = form.out_channels // groups
    parts = [feats[g, :take].to(torch.float64) @ weight[g * per_group:(g + 1) * per_group].t() for g in range(groups)]
    predicted = torch.cat(parts, dim=1)
    if form.bias is not None:
        predicted = predicted + form.bias.to(torch.float64)
    expected = real[:take].to(torch.float64)
    error = float((predicted - expected).norm() / (expected.norm() + 1e-12))
    tolerance = 3e-2 if torch.finfo(dtype).bits <= 16 else 5e-3
    if error > tolerance and float((predicted - expected).abs().max()) > 1e-6:
        return (f"its linear form does not reproduce its output (relative error {error:.2g}); the layer "
                "computes more than weight @ input + bias")
    return None


class CalibrationStatistics:
    """Statistics of the inputs (or outputs) of chosen layers, over every batch run while recording."""

    def __init__(self) -> None:
        self._layers: Dict[Tuple[int, str], LayerStatistics] = {}
        self._modules: Dict[int, nn.Module] = {}  # keeps ids stable while statistics refer to them
        self._handles: List[Any] = []
        self.batches = 0

    # -- access ---------------------------------------------------------------------------------
    def get(self, module: nn.Module, side: str = "in") -> Optional[LayerStatistics]:
        """The statistics of ``module``'s input (``side="in"``) or output channels, if any row was seen."""
        found = self._layers.get((id(module), side))
        return found if found is not None and found.rows > 0 else None

    def __contains__(self, module: nn.Module) -> bool:
        return self.get(module) is not None

    def layers(self) -> List[LayerStatistics]:
        return [s for s in self._layers.values() if s.rows > 0]

    def reduce_state(self, reducer: Any, model: nn.Module) -> None:
        """Sum every layer's running sums and row counts over the ranks of a process group.

        N ranks with B batches each then hold what one process with all N*B batches would.
        """
        fields = ("sum", "sum_sq", "feature_sum", "gram")
        state: Dict[str, torch.Tensor] = {"batches": torch.tensor(float(self.batches))}
        for (_, side), layer in self._layers.items():
            name = f"{layer.qualname}[{side}]"
            state.update({f"{name}/{f}": getattr(layer, f) for f in fields if getattr(layer, f) is not None})
            state[f"{name}/rows"] = torch.tensor(float(layer.rows))
            state[f"{name}/feature_rows"] = torch.tensor(float(layer.feature_rows))
        summed = reducer.sum(state, "calibration statistics")
        self.batches = int(round(float(summed["batches"])))
        for (_, side), layer in self._layers.items():
            name = f"{layer.qualname}[{side}]"
            for f in fields:
                if getattr(layer, f) is not None:
                    setattr(layer, f, summed[f"{name}/{f}"])
            layer.rows = int(round(float(summed[f"{name}/rows"])))
            layer.feature_rows = int(round(float(summed[f"{name}/feature_rows"])))

    def reset(self) -> None:
        self._layers.clear()
        self._modules.clear()
        self.batches = 0

    # -- recording -----------------------------------------------------------------------------------
    def register(self, model: nn.Module, requests: Optional[Iterable[Request]] = None, gram: bool = False) -> None:
        """Start recording ``requests`` (default: the input of every layer that has a handler)."""
        if requests is None:
            requests = default_requests(model, gram)
        self._handles.append(model.register_forward_hook(lambda *args: self._count_batch()))
        for request in requests:
            key = (id(request.module), request.side)
            if key not in self._layers:
                self._layers[key] = LayerStatistics(request)
                self._modules[id(request.module)] = request.module
            hook = self._make_hook(self._layers[key])
            self._handles.append(request.module.register_forward_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        """Stop recording (statistics are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def record(self, model: nn.Module, requests: Optional[Iterable[Request]] = None, gram: bool = False
               ) -> Iterator["CalibrationStatistics"]:
        self.register(model, requests, gram)
        try:
            yield self
        finally:
            self.remove()

    def _count_batch(self) -> None:
        self.batches += 1

    def _make_hook(self, stats: LayerStatistics):
        request = stats.request

        def hook(module: nn.Module, args: Tuple, kwargs: Dict, output: Any) -> None:
            inputs = list(iter_tensors(args)) + list(iter_tensors(kwargs))
            outputs = list(iter_tensors(output))
            try:
                ins, outs = hv.tensor_links(request.handler, module, inputs, outputs, request.qualname)
            except Exception:
                return
            if request.side == "in":
                link = _first(ins, "in")
                tensor = inputs[link.index] if link is not None else None
            else:
                link = _first(outs, "out")
                tensor = outputs[link.index] if link is not None else None
            if tensor is None or not tensor.is_floating_point():
                return
            with torch.no_grad():
                stats.add_channels(tensor, link.dim)
                if request.side == "in" and stats.form is not None:
                    out_link = _first(outs, "out")
                    y = outputs[out_link.index] if out_link is not None else None
                    stats.add_features(tensor, y)
        return hook


def _first(links: List[hv.TensorLink], side: str) -> Optional[hv.TensorLink]:
    for link in links:
        if link.repeat == 1 and (link.side is None or link.side == side):
            return link
    return None


def default_requests(model: nn.Module, gram: bool) -> List[Request]:
    """The input of every layer with a handler; with its linear form (for the Gram) where it has one."""
    from .._plugins import get_hub
    from .forms import FORM_METHOD

    registry = get_hub().handlers()
    requests = []
    for name, module in model.named_modules():
        spec = registry.lookup(type(module))
        if spec is None:
            continue
        handler = hv.specialize(spec.handler, module)
        form = None
        if gram and callable(getattr(handler, FORM_METHOD, None)):
            form = getattr(handler, FORM_METHOD)(module)
        requests.append(Request(module, handler, name, "in", form, gram and form is not None))
    return requests


__all__ = ["CalibrationStatistics", "LayerStatistics", "Request", "default_requests"]
