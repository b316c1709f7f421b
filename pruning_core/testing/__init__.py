"""Helpers for plugin authors and for pruning_core's own tests.

``check_handler`` runs the layer-handler contract against a real layer, the
way a plugin's test suite should; ``architectures`` draws random models for
property-based tests.
"""

from __future__ import annotations

import copy
from typing import Any, List

import torch
from torch import nn

from ..errors import PruningError
from ..graph import handlers as hv
from ..graph.channels import channel_view


class HandlerContractError(PruningError):
    """A layer handler does not behave as the contract says."""


def _fail(handler: Any, message: str) -> None:
    raise HandlerContractError(f"{hv.handler_name(handler)}: {message}")


def check_handler(handler: Any, layer: nn.Module, example_input: torch.Tensor) -> List[str]:
    """Check ``handler`` against ``layer``: sizes, both pruning directions, the forward pass
    afterwards and ``channel_params``. Returns the checks that ran; raises
    :class:`HandlerContractError` on the first violation."""
    ran: List[str] = []
    with torch.no_grad():
        reference = layer(example_input)
    reference = reference[0] if isinstance(reference, (tuple, list)) else reference
    n_out, n_in = int(handler.get_out_channels(layer)), int(handler.get_in_channels(layer))
    if n_out < 2 or n_in < 1:
        _fail(handler, f"use a layer with at least 2 output channels (got {n_out})")
    out_dim = hv.infer_channel_dim(handler, layer, reference, n_out, "out", "layer")
    in_dim = hv.infer_channel_dim(handler, layer, example_input, n_in, "in", "layer")

    pruned = copy.deepcopy(layer)
    returned = handler.prune_out_channels(pruned, [0])
    if returned is not pruned:
        _fail(handler, "prune_out_channels must return the layer it pruned")
    if int(handler.get_out_channels(pruned)) != n_out - 1:
        _fail(handler, "get_out_channels did not drop by one after removing one output channel")
    coupled = hv.is_coupled(handler)
    x = example_input
    if coupled and in_dim is not None:
        x = example_input.index_select(in_dim, torch.arange(1, example_input.shape[in_dim]))
    with torch.no_grad():
        out = pruned(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out_dim is not None and out.shape[out_dim] != reference.shape[out_dim] - 1:
        _fail(handler, f"after removing one output channel the output has {out.shape[out_dim]} channels")
    ran.append("prune_out_channels")

    if not coupled and in_dim is not None and n_in > 1:
        pruned = copy.deepcopy(layer)
        handler.prune_in_channels(pruned, [0])
        if int(handler.get_in_channels(pruned)) != n_in - 1:
            _fail(handler, "get_in_channels did not drop by one after removing one input channel")
        with torch.no_grad():
            pruned(example_input.index_select(in_dim, torch.arange(1, n_in)))
        ran.append("prune_in_channels")

    for side, size in (("out", n_out), ("in", n_in)):
        for tensor, dim, to_channels in hv.channel_params(handler, layer, side):
            view = channel_view(tensor.detach(), to_channels)
            if view.shape[dim] != size:
                _fail(handler, f"channel_params({side!r}) gives a tensor with {view.shape[dim]} entries "
                               f"along dim {dim}, expected {size}")
        ran.append(f"channel_params({side})")
    return ran


__all__ = ["check_handler", "HandlerContractError"]
