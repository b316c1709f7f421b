"""Declared structure before planning: the user's ``num_heads`` and channel groups, then plugins' hints."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from torch import nn

from .. import _plugins
from ..errors import ConfigurationError
from ..records import SizeAttribute
from ..graph.depgraph import DependencyGraph
from .options import PruningOptions


# attribute names a hand-written attention block keeps its head count and head size under
_HEAD_COUNT = re.compile(r"^(num_|n_?)?(attention_)?heads?$")
_HEAD_SIZE = re.compile(r"^(head_(dim|size)|dim_head|d_head|attention_head_size)$")


def head_size_attributes(model: nn.Module, num_heads: Dict[nn.Module, int]) -> List[SizeAttribute]:
    """The attributes of the block holding each ``num_heads`` layer that hold its head count and head size.

    Torch-Pruning's recipe for a hand-written ViT passes ``num_heads={m.qkv: m.num_heads}`` and sets
    ``m.num_heads``/``m.head_dim`` itself after pruning; the forward uses them before that (in the
    check of every step), so they are followed and set here, as a plugin's ``SizeAttribute`` would.
    Blocks a plugin already describes, and attributes whose values do not fit the layer, are left out.
    """
    if not num_heads:
        return []
    hub = _plugins.get_hub()
    described = {id(m) for m, _, _ in hub.size_attributes(model)} | {id(r.module) for r in hub.attention_layouts(model)}
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    records = []
    for module, count in num_heads.items():
        parent, width = parents.get(id(module)), hub.out_channels(module)
        if parent is None or id(parent) in described or not isinstance(count, int) or not width:
            continue
        ints = {n: v for n, v in vars(parent).items() if type(v) is int and v > 1}
        counts = tuple(n for n, v in ints.items() if _HEAD_COUNT.match(n) and v == count)
        sizes = tuple(n for n, v in ints.items() if _HEAD_SIZE.match(n) and width % (v * count) == 0)
        if counts or sizes:
            records.append(SizeAttribute(parent, sizes, counts=counts))
            described.add(id(parent))
    return records


def _name(DG: DependencyGraph, module: nn.Module) -> str:
    return DG.name_of(module) or type(module).__name__


def apply_structure(DG: DependencyGraph, options: PruningOptions, model: nn.Module, ignored_layers: List[Any]
                    ) -> Tuple[Dict[nn.Module, int], Dict[nn.Module, int]]:
    """Declare heads and equal channel groups on ``DG``; modules plugins say to keep join ``ignored_layers``.

    User arguments take precedence over plugin hints, except where a plugin's removable units hold
    several of the user's heads (a key/value group and its query heads): removing whole units keeps
    the groups, and a ``head_pruning_ratio`` then removes that fraction of the query heads, not more.
    A user's declaration that does not fit raises :class:`ConfigurationError`, a plugin's hint that
    does not fit is not used. Returns the plugins' ``round_to`` hints (module -> keep a multiple of
    this many output channels) and, for modules pruned by such units, the user's heads per unit.
    """
    heads = dict(options.num_heads)
    heads_per_unit: Dict[nn.Module, int] = {}
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
        if hint.num_heads and DG.has_channels(hint.module):
            asked = heads.get(hint.module)
            if asked is None or (asked > hint.num_heads and asked % hint.num_heads == 0):
                heads[hint.module] = hint.num_heads
                head_flags[id(hint.module)] = hint
                if asked is not None:
                    heads_per_unit[hint.module] = asked // hint.num_heads
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
    return rounding, heads_per_unit
