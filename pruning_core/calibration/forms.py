"""How a layer maps its input to its output linearly: what the Gram statistics and compensation need.

A handler opts in with one optional method, ``linear_form(layer)``, returning a
:class:`LinearForm` (or ``None`` when this particular layer is not linear in its
input, such as a transposed convolution). Criteria that only need per-channel
moments (``wanda``, ``flap``) work without it; ``obs`` and compensation need it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigurationError
from ..graph import handlers as hv

FORM_METHOD = "linear_form"


@dataclasses.dataclass
class LinearForm:
    """``y = W @ features(x) + b``, computed independently in ``groups`` blocks.

    :param weight: the current weight as an ``(out_channels, features_per_group)`` matrix
        (a view is fine; it is only read). Output rows ``[g*O/G, (g+1)*O/G)`` belong to group ``g``.
    :param bias: the current bias ``(out_channels,)`` or ``None``.
    :param features: the layer's input, as the layer receives it, to ``(groups, rows, features_per_group)``.
    :param outputs: the layer's output, as it returns it, to ``(rows, out_channels)`` in the same row order.
    :param write: ``write(weight_matrix, bias)`` puts new values in the layer, replacing its parameters
        with new ``nn.Parameter`` objects (never editing them in place, so a failed step can be undone);
        ``bias`` may be ``None`` to leave it as it is.
    :param groups: independent blocks (grouped convolutions); ``1`` for dense layers.
    :param features_per_channel: features each input channel contributes (``kh*kw`` for a convolution).
        Within a group, local input channel ``l`` owns features ``[l*p, (l+1)*p)``.
    :param accepts_bias: whether ``write`` may create a bias the layer does not have yet.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    features: Callable[[torch.Tensor], torch.Tensor]
    outputs: Callable[[torch.Tensor], torch.Tensor]
    write: Callable[[torch.Tensor, Optional[torch.Tensor]], None]
    groups: int = 1
    features_per_channel: int = 1
    accepts_bias: bool = True

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def features_per_group(self) -> int:
        return int(self.weight.shape[1])


def has_linear_form(handler: Any) -> bool:
    return callable(getattr(handler, FORM_METHOD, None))


def linear_form(handler: Any, layer: nn.Module, qualname: str, needed_by: str) -> LinearForm:
    """The layer's linear form, or a ConfigurationError naming the optional handler method."""
    fn = getattr(handler, FORM_METHOD, None)
    form = fn(layer) if callable(fn) else None
    if form is None:
        why = (f"its handler {hv.handler_name(handler)} has no {FORM_METHOD}(layer) method" if not callable(fn)
               else f"{hv.handler_name(handler)}.{FORM_METHOD}(layer) returned None for it")
        raise ConfigurationError(
            f"{needed_by} needs the input Gram of {qualname} ({type(layer).__name__}), but {why}. Define "
            f"{FORM_METHOD}(layer) returning a pruning_core.calibration.LinearForm on the handler, pass the layer "
            "in ignored_layers, or use a criterion that needs only channel moments (wanda, flap) with "
            "compensation=None")
    return form


def _new_parameter(like: torch.Tensor, value: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(value.detach().to(dtype=like.dtype, device=like.device), requires_grad=requires_grad)


def _write_bias(layer: nn.Module, bias: Optional[torch.Tensor]) -> None:
    if bias is None:
        return
    old = layer._parameters.get("bias")
    weight = layer.weight
    layer._parameters["bias"] = _new_parameter(weight, bias, old.requires_grad if old is not None
                                               else weight.requires_grad)


def dense_form(layer: nn.Module, transposed: bool = False) -> LinearForm:
    """A layer computing ``x @ W.T + b`` on the last dim (``transposed``: ``x @ W + b``, GPT-2's Conv1D)."""
    weight = layer.weight.detach()
    matrix = weight.t() if transposed else weight

    def features(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1, x.shape[-1])

    def outputs(y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1, y.shape[-1])

    def write(new: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        old = layer.weight
        value = new.t().contiguous() if transposed else new
        layer._parameters["weight"] = _new_parameter(old, value.reshape(old.shape), old.requires_grad)
        _write_bias(layer, bias)

    return LinearForm(matrix, layer.bias.detach() if layer.bias is not None else None, features, outputs, write)


def conv_form(layer: nn.Module) -> Optional[LinearForm]:
    """``nn.Conv1d``/``nn.Conv2d`` (any groups, stride, dilation, padding mode) on unfolded patches.

    1x1 convolutions skip the unfolding (their features are the channels), and
    grouped and depthwise ones keep one small Gram per group instead of a block-diagonal one.
    Transposed and 3-d convolutions have no form here.
    """
    spatial = len(layer.kernel_size)
    if getattr(layer, "transposed", False) or spatial not in (1, 2):
        return None
    weight = layer.weight.detach()
    groups = layer.groups
    kernel = tuple(layer.kernel_size)
    per_channel = int(torch.tensor(kernel).prod())
    pointwise = per_channel == 1 and all(s == 1 for s in _as_tuple(layer.stride, spatial)) \
        and not any(_as_tuple(layer.padding, spatial) if not isinstance(layer.padding, str) else (1,))
    out = weight.shape[0]

    def features(x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == spatial + 2
        if not batched:
            x = x.unsqueeze(0)
        channels = x.shape[1]
        if pointwise:  # exact reduced form: a 1x1 convolution is a linear layer on every pixel
            rows = x.movedim(1, -1).reshape(-1, channels)
        else:
            pad = layer._reversed_padding_repeated_twice
            if any(pad):
                mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
                x = F.pad(x, tuple(pad), mode=mode)
            if spatial == 1:
                x = x.unsqueeze(2)
            dil, stride = _as_tuple(layer.dilation, spatial), _as_tuple(layer.stride, spatial)
            if spatial == 1:
                kernel2, dil, stride = (1, kernel[0]), (1, dil[0]), (1, stride[0])
            else:
                kernel2 = kernel
            patches = F.unfold(x, kernel2, dilation=dil, stride=stride)  # (N, C*k, L), channel-major
            rows = patches.transpose(1, 2).reshape(-1, channels * per_channel)
        # (rows, C*k) -> (groups, rows, C/G*k)
        return rows.reshape(rows.shape[0], groups, -1).transpose(0, 1)

    def outputs(y: torch.Tensor) -> torch.Tensor:
        if y.dim() == spatial + 1:
            y = y.unsqueeze(0)
        return y.movedim(1, -1).reshape(-1, y.shape[1])

    def write(new: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        old = layer.weight
        layer._parameters["weight"] = _new_parameter(old, new.reshape(old.shape), old.requires_grad)
        _write_bias(layer, bias)

    return LinearForm(weight.reshape(out, -1), layer.bias.detach() if layer.bias is not None else None,
                      features, outputs, write, groups=groups, features_per_channel=per_channel)


def _as_tuple(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


__all__ = ["LinearForm", "linear_form", "has_linear_form", "dense_form", "conv_form", "FORM_METHOD"]
