"""A uniform view of any layer handler: the four contract methods plus optional ones.

Third-party handlers only have to implement ``prune_out_channels``,
``prune_in_channels``, ``get_out_channels`` and ``get_in_channels``. This module
supplies the defaults for the optional methods that tracing and scoring use, so
graph code never needs to know which concrete layer it is looking at.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..errors import GraphError


class ChannelParam(NamedTuple):
    """A parameter (or buffer) whose dimension ``dim`` is indexed by channels.

    ``to_channels`` maps any tensor shaped like the parameter (its data, its
    gradient) to a tensor whose ``dim`` has one entry per channel; ``None``
    means the parameter is already laid out that way.
    """

    tensor: torch.Tensor
    dim: int
    to_channels: Optional[Any] = None


class TensorLink(NamedTuple):
    """Tensor ``index`` (among a call's tensors) carries a channel slot along ``dim``.

    ``repeat`` > 1 means the dimension holds that many copies of the slot side
    by side, as a bidirectional RNN's output does. ``side`` names the slot
    ("in" or "out"); by default inputs carry "in" and outputs carry "out"
    (an RNN's initial hidden state is an input that carries "out").
    """

    index: int
    dim: int
    repeat: int = 1
    side: Optional[str] = None


def is_coupled(handler: Any) -> bool:
    """Whether the handler declares input and output channels coupled (BatchNorm-like)."""
    try:
        return handler.prune_in_channels == handler.prune_out_channels
    except Exception:
        return False


def handler_name(handler: Any) -> str:
    return getattr(handler, "name", None) or type(handler).__name__


def specialize(handler: Any, layer: Any) -> Any:
    """The handler to show for ``layer``: a handler may pick a variant per layer."""
    pick = getattr(handler, "specialize", None)
    return pick(layer) if callable(pick) else handler


def channel_groups(handler: Any, layer: Any) -> int:
    """How many independent groups the layer's channels form (grouped convolutions)."""
    fn = getattr(handler, "channel_groups", None)
    return int(fn(layer)) if callable(fn) else 1


def infer_channel_dim(handler: Any, layer: Any, tensor: torch.Tensor, size: int, side: str,
                      qualname: str) -> Optional[int]:
    """The dim of ``tensor`` that holds ``size`` channels of ``layer`` on ``side``, or None if none does."""
    fn = getattr(handler, "channel_dim", None)
    if callable(fn):
        dim = fn(layer, tensor, side)
        if dim is None:
            return None
        dim %= max(tensor.ndim, 1)
        if tensor.ndim and tensor.shape[dim] == size:
            return dim
        # A subclass that lays its input out differently (LayerNorm2d on NCHW): find the dim by size.
    matches = [d for d in range(tensor.ndim) if tensor.shape[d] == size]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        return None
    raise GraphError(
        f"cannot tell which dimension of the {side}put of {qualname} ({type(layer).__name__}) holds its "
        f"{size} channels: shape {tuple(tensor.shape)} has that size at dims {matches}. Define "
        f"channel_dim(layer, tensor, side) on {handler_name(handler)}, or trace with example inputs "
        "whose sizes differ"
    )


def declares_links(handler: Any) -> bool:
    """Whether the handler says itself which tensors carry its channels (``tensor_channel_dims``)."""
    return callable(getattr(handler, "tensor_channel_dims", None))


def tensor_links(handler: Any, layer: Any, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                 qualname: str, sizes: Optional[Tuple[int, int]] = None) -> Tuple[List[TensorLink], List[TensorLink]]:
    """Which call inputs carry the input channels and which outputs carry the output channels.

    ``sizes`` (input, output channel counts) overrides what the handler reports.
    """
    fn = getattr(handler, "tensor_channel_dims", None)
    if callable(fn):
        ins, outs = fn(layer, inputs, outputs)
        return [TensorLink(*link) for link in ins], [TensorLink(*link) for link in outs]
    n_in, n_out = sizes if sizes is not None else (None, None)
    ins: List[TensorLink] = []
    outs: List[TensorLink] = []
    if inputs:
        size = n_in if n_in is not None else int(handler.get_in_channels(layer))
        dim = infer_channel_dim(handler, layer, inputs[0], size, "in", qualname)
        if dim is not None:
            ins.append(TensorLink(0, dim))
    if outputs:
        size = n_out if n_out is not None else int(handler.get_out_channels(layer))
        dim = infer_channel_dim(handler, layer, outputs[0], size, "out", qualname)
        if dim is not None:
            outs.append(TensorLink(0, dim))
    return ins, outs


def freeze_unlinked_inputs(space: Any, handler: Any, inputs: Sequence[torch.Tensor], in_links: Sequence[TensorLink],
                           dims_of: Callable[[torch.Tensor], List[Any]], qualname: str) -> None:
    """Inputs that a handler naming its links leaves out are read at fixed sizes (MultiheadAttention's key
    when ``kdim`` differs from ``embed_dim``, a projected LSTM): their dims are frozen."""
    if not declares_links(handler):
        return
    linked = {link.index for link in in_links}
    for index, tensor in enumerate(inputs):
        if index not in linked and tensor.is_floating_point():
            for expr in dims_of(tensor):
                space.freeze(expr, f"{qualname}: an input its handler does not prune")


def likely_channel_dim(handler: Any, layer: Any, tensor: torch.Tensor, side: str) -> int:
    """A best guess at the channel dim of ``tensor`` when the handler's sizes cannot be trusted.

    The handler's ``channel_dim`` if it has one; else a dim matching a dim of the layer's
    weight; else dim 1 of a batched feature map, the last dim otherwise.
    """
    fn = getattr(handler, "channel_dim", None)
    if callable(fn):
        dim = fn(layer, tensor, side)
        if dim is not None:
            return dim % max(tensor.ndim, 1)
    weight = next((p for p in layer.parameters(recurse=False) if p.ndim >= 1), None) if hasattr(layer, "parameters") \
        else None
    if weight is not None:
        wanted = weight.shape[0] if side == "out" or weight.ndim == 1 else weight.shape[1]
        for dim in range(tensor.ndim - 1, 0 if tensor.ndim > 1 else -1, -1):
            if tensor.shape[dim] == wanted:
                return dim
    return 1 if tensor.ndim >= 3 else max(tensor.ndim - 1, 0)


def channel_params(handler: Any, layer: Any, side: str) -> List[ChannelParam]:
    """The parameter slices one channel owns on ``side`` ("out" or "in")."""
    fn = getattr(handler, "channel_params", None)
    if callable(fn):
        return [ChannelParam(*p) for p in fn(layer, side)]
    from .probe import probe_channel_params  # scoring only; keeps tracing light

    return probe_channel_params(handler, layer, side)
