"""Declared structure before planning: the user's ``num_heads`` and channel groups, then plugins' hints."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import nn

from .. import _plugins
from ..errors import ConfigurationError
from ..graph.depgraph import DependencyGraph
from .options import PruningOptions


def _name(DG: DependencyGraph, module: nn.Module) -> str:
    return DG.name_of(module) or type(module).__name__


def apply_structure(DG: DependencyGraph, options: PruningOptions, model: nn.Module, ignored_layers: List[Any]
                    ) -> Dict[nn.Module, int]:
    """Declare heads and equal channel groups on ``DG``; modules plugins say to keep join ``ignored_layers``.

    User arguments take precedence over plugin hints; a user's declaration that does not fit raises
    :class:`ConfigurationError`, a plugin's hint that does not fit is not used. Returns the plugins'
    ``round_to`` hints: module -> keep a multiple of this many of its output channels.
    """
    heads = dict(options.num_heads)
    head_flags: Dict[int, Any] = {}
    hinted_groups: List[Tuple[Any, int, str]] = []
    rounding: Dict[nn.Module, int] = {}
    for hint in _plugins.get_hub().structure_hints(model):
        if hint.keep and hint.module is not None:
            ignored_layers.append(hint.module)
        if hint.round_to and hint.round_to > 1 and DG.has_channels(hint.module):
            rounding[hint.module] = hint.round_to
        for side, count, table in (("out", hint.out_channel_groups, options.out_channel_groups),
                                   ("in", hint.in_channel_groups, options.in_channel_groups)):
            if count and hint.module not in table and DG.has_channels(hint.module, side):
                hinted_groups.append((hint.module, count, side))
        if hint.num_heads and hint.module not in heads and DG.has_channels(hint.module):
            heads[hint.module] = hint.num_heads
            head_flags[id(hint.module)] = hint
    for module, count in heads.items():
        hint = head_flags.get(id(module))
        if not DG.has_channels(module):
            raise ConfigurationError(
                f"num_heads: {_name(DG, module)} did not run during "
                "tracing and its weight was not used either, so its heads cannot be declared; pass the layer "
                "whose output holds the heads, or leave num_heads out")
        by_heads = options.prune_num_heads if hint is None or hint.prunable_heads is None else hint.prunable_heads
        within = options.prune_head_dims if hint is None or hint.prunable_head_dims is None \
            else hint.prunable_head_dims
        applied = DG.set_channel_structure(module, count, "out", prunable_groups=by_heads,
                                           prunable_within=within,
                                           group_size=hint.head_dim if hint is not None else None)
        if not applied and hint is None:
            raise ConfigurationError(
                f"num_heads={{{type(module).__name__}: {count}}}: the output channels of "
                f"{_name(DG, module)} cannot be split into {count} heads; "
                "pass the number of heads of the projection that produces them")
    for side, table in (("out", options.out_channel_groups), ("in", options.in_channel_groups)):
        for module, count in table.items():
            if not DG.set_channel_structure(module, count, side, prunable_groups=False, prunable_within=True):
                raise ConfigurationError(
                    f"{side}_channel_groups: {count} does not divide the {side}put channels of "
                    f"{_name(DG, module)}")
    for module, count, side in hinted_groups:  # a plugin's hint that does not fit is simply not used
        DG.set_channel_structure(module, count, side, prunable_groups=False, prunable_within=True)
    return rounding
