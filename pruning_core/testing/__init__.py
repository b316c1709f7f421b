"""Helpers for plugin authors and for pruning_core's own tests.

* :func:`check_handler` runs the layer-handler contract against a real layer, the
  way a plugin's test suite should;
* :mod:`pruning_core.testing.oracle` holds the zero-contribution and atomicity
  oracles, for checking pruning on whole models;
* :mod:`pruning_core.testing.architectures` builds random models from block
  lists, and :mod:`pruning_core.testing.strategies` draws those lists with
  hypothesis (imported only there: hypothesis is a test dependency).
"""

from __future__ import annotations

import copy
from typing import Any, List, NoReturn, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigurationError, PruningError
from ..graph import handlers as hv
from ..graph.channels import channel_view


class HandlerContractError(PruningError):
    """A layer handler does not behave as the contract says."""


def _fail(handler: Any, message: str) -> NoReturn:
    raise HandlerContractError(f"{hv.handler_name(handler)}: {message}")


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _link(links: Sequence[hv.TensorLink], side: str) -> Optional[hv.TensorLink]:
    """The link of the call's first tensor that carries ``side``'s channels."""
    return next((link for link in links if link.index == 0 and link.side in (None, side)), None)


def _positions(keep: torch.Tensor, size: int, repeat: int) -> torch.Tensor:
    """Tensor positions of channels ``keep`` when the tensor holds ``repeat`` copies of ``size`` channels."""
    return torch.cat([keep + copy_index * size for copy_index in range(repeat)])


def _kept(size: int, idxs: Sequence[int]) -> torch.Tensor:
    removed = set(idxs)
    return torch.tensor([i for i in range(size) if i not in removed], dtype=torch.long)


def _forward(handler: Any, layer: nn.Module, x: torch.Tensor, after: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            return _first(layer(x))
    except Exception as exc:  # any failure of the pruned layer is the handler's
        raise HandlerContractError(f"{hv.handler_name(handler)}: the layer's forward fails after {after}: "
                                   f"{type(exc).__name__}: {exc}") from exc


def _owned(layer: nn.Module, tensor: torch.Tensor) -> bool:
    return any(tensor is own for own in list(layer.parameters()) + list(layer.buffers()))


def _check_channel_params(handler: Any, layer: nn.Module, side: str, size: int, when: str) -> None:
    for tensor, dim, to_channels in hv.channel_params(handler, layer, side):
        if not _owned(layer, tensor):
            _fail(handler, f"channel_params({side!r}){when} returns a tensor of shape {tuple(tensor.shape)} that "
                           "is not a parameter or buffer of the layer (scores read its gradient)")
        view = channel_view(tensor.detach(), to_channels)
        if view.shape[dim] != size:
            _fail(handler, f"channel_params({side!r}){when} gives a tensor with {view.shape[dim]} entries "
                           f"along dim {dim}, expected {size}")


def check_handler(handler: Any, layer: nn.Module, example_input: torch.Tensor,
                  idxs: Optional[Sequence[int]] = None, exact_out: bool = False,
                  exact_in: bool = False) -> List[str]:
    """Check ``handler`` against ``layer``: sizes, both pruning directions, the forward pass
    afterwards and ``channel_params`` before and after pruning.

    :param handler: the layer handler (the object a plugin registers); checked in the variant it
        picks for ``layer`` (``specialize``), as the graph uses it.
    :param layer: a layer the handler prunes, with at least two output channels; it is not changed
        (every check prunes a copy).
    :param example_input: the layer's input; its channel dimension should not share its size with
        another dimension, so that the channel dimension can be found.
    :param idxs: the channels to remove in each direction (default ``[0]``). Give a structured
        choice for handlers that only accept one, e.g. the first channel of every head.
    :param exact_out: also check that removing output channels leaves the other output channels
        unchanged (true of convolutions and linear layers, not of recurrent ones).
    :param exact_in: also check that removing input channels gives the output of the original layer
        on an input whose removed channels are zero (true of linear maps, not of normalisation or of
        weight standardisation). Ignored for coupled handlers.
    :returns: the names of the checks that ran.
    :raises HandlerContractError: on the first violation.
    """
    handler = hv.specialize(handler, layer)  # the variant the graph would use for this layer
    idxs = [0] if idxs is None else sorted(int(i) for i in idxs)
    ran: List[str] = []
    with torch.no_grad():
        reference = _first(layer(example_input))
    n_out, n_in = int(handler.get_out_channels(layer)), int(handler.get_in_channels(layer))
    if n_out < 2 or n_in < 1:
        _fail(handler, f"use a layer with at least 2 output channels (got {n_out})")
    bound = min(n_out, n_in)
    if not idxs or len(set(idxs)) != len(idxs) or idxs[0] < 0 or idxs[-1] >= bound or len(idxs) == bound:
        raise ConfigurationError(f"check_handler(idxs={idxs}): give some but not all of the channels "
                                 f"0..{bound - 1} (the layer has {n_out} outputs and {n_in} inputs), each once")
    in_links, out_links = hv.tensor_links(handler, layer, [example_input], [reference], "layer")
    in_link, out_link = _link(in_links, "in"), _link(out_links, "out")
    coupled = hv.is_coupled(handler)

    pruned = copy.deepcopy(layer)
    returned = handler.prune_out_channels(pruned, idxs)
    if returned is not pruned:
        _fail(handler, "prune_out_channels must return the layer it pruned")
    if int(handler.get_out_channels(pruned)) != n_out - len(idxs):
        _fail(handler, f"get_out_channels did not drop by {len(idxs)} after removing {len(idxs)} output channels")
    x = example_input
    if coupled and in_link is not None:
        keep_in = _positions(_kept(n_in, idxs), n_in, in_link.repeat)
        x = example_input.index_select(in_link.dim, keep_in)
    out = _forward(handler, pruned, x, "prune_out_channels")
    if out_link is not None:
        expected = reference.shape[out_link.dim] - len(idxs) * out_link.repeat
        if out.shape[out_link.dim] != expected:
            _fail(handler, f"after removing {len(idxs)} output channels the output has "
                           f"{out.shape[out_link.dim]} channels along dim {out_link.dim}, expected {expected}")
        if exact_out:
            keep_out = _positions(_kept(n_out, idxs), n_out, out_link.repeat)
            if not torch.allclose(out, reference.index_select(out_link.dim, keep_out), rtol=1e-4, atol=1e-5):
                _fail(handler, "removing output channels changed the output channels that were kept")
    _check_channel_params(handler, pruned, "out", n_out - len(idxs), " after prune_out_channels")
    ran.append("prune_out_channels")

    if not coupled and in_link is not None:
        pruned = copy.deepcopy(layer)
        handler.prune_in_channels(pruned, idxs)
        if int(handler.get_in_channels(pruned)) != n_in - len(idxs):
            _fail(handler, f"get_in_channels did not drop by {len(idxs)} after removing {len(idxs)} input channels")
        keep_in = _positions(_kept(n_in, idxs), n_in, in_link.repeat)
        out = _forward(handler, pruned, example_input.index_select(in_link.dim, keep_in), "prune_in_channels")
        if exact_in:
            zeroed = example_input.clone()
            zeroed.index_fill_(in_link.dim, _positions(torch.tensor(idxs), n_in, in_link.repeat), 0)
            with torch.no_grad():
                on_zeroed = _first(layer(zeroed))
            if not torch.allclose(out, on_zeroed, rtol=1e-4, atol=1e-5):
                _fail(handler, "removing input channels does not match zeroing them in the input")
        _check_channel_params(handler, pruned, "in", n_in - len(idxs), " after prune_in_channels")
        ran.append("prune_in_channels")

    for side, size in (("out", n_out), ("in", n_in)):
        _check_channel_params(handler, layer, side, size, "")
        ran.append(f"channel_params({side})")
    return ran


def make_plugin(name: str, **hooks: Any) -> Any:
    """A plugin module named ``name`` whose hook implementations are ``hooks`` (``hook_name=function``),
    ready for ``pruning_core._plugins.get_hub().register(plugin, name)`` in a test."""
    import types

    from ..hookspecs import hookimpl

    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


__all__ = ["check_handler", "HandlerContractError", "make_plugin"]
