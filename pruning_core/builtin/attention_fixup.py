"""Attention blocks that plugins describe with :class:`pruning_core.AttentionLayout`: heads in, attributes out.

Plugins declare where a block keeps its heads; this built-in plugin does the
arithmetic they used to repeat. Before pruning, :func:`layout_hints` turns a
layout into the heads of each projection (the pruner's structure hints). After
every pruned group, :func:`fixup_after_prune` reads the projections' current
channel structure from the graph (``[heads, head_dim]``, ``[kv_heads,
queries_per_kv, head_dim]`` or ``[3, heads, head_dim]``) and sets the declared
attributes. Modules are matched by qualified name, so trial copies of the model
are fixed the same way.

A ``fused`` layout whose ``num_key_value_heads`` (or ``num_heads`` over
``kv_groups``) says fewer key/value heads than query heads is read as
``[q: heads x size | k: kv_heads x size | v: kv_heads x size]`` (Phi-3, Falcon,
GPTBigCode), whether cut apart by slices or viewed per key/value group: a
removable head is a key/value group, or a query head when there is a single
key/value head (multi-query attention).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import PruningError
from ..graph.record import original_attr, original_shape
from ..hookspecs import hookimpl
from ..records import AttentionLayout, StructureHint


def _first_int(module: Any, names: Tuple[str, ...], read: Callable[..., Any] = getattr) -> Optional[int]:
    for name in names:
        value = read(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _child(module: Any, name: str) -> Any:
    return module.get_submodule(name) if name else module


def layout_hints(layout: AttentionLayout, out_channels: Callable[[Any], Optional[int]]) -> List[StructureHint]:
    """The heads of each projection of ``layout`` (before pruning), as structure hints.

    Separate projections: a removable head is a key/value head with its query
    heads (grouped-query attention keeps its group size). A fused projection:
    ``num_heads`` heads of ``head_dim`` in each of its ``parts``, or no hint when
    its width disagrees with that.
    """
    module = layout.module
    flags = {"prunable_heads": layout.prunable_heads, "prunable_head_dims": layout.prunable_head_dims}
    size = _first_int(module, layout.head_dim)
    hints: List[StructureHint] = []
    if layout.fused is None:
        projections = [_child(module, name) for name in layout.projections()]
        widths = [out_channels(p) for p in projections]
        if size is None or any(w is None for w in widths):
            return []
        kv_heads = max(1, widths[1] // size)
        for projection, width in zip(projections, widths):
            hints.append(StructureHint(module=projection, num_heads=kv_heads, head_dim=width // kv_heads, **flags))
        return _stamped(hints, layout)
    projection = _child(module, layout.fused)
    width, parts = out_channels(projection), layout.parts
    heads, kv_heads = _counts(layout, module)
    if width is None:
        return []
    if heads and kv_heads and kv_heads < heads and size and parts == 3 and width == (heads + 2 * kv_heads) * size:
        # [q | k | v] with fewer key/value heads. A removable unit is a key/value group: its key and
        # value head and its query heads (``width / kv_heads`` channels in all). With one key/value
        # head (multi-query attention) removing it would remove every head: the query heads are the units.
        hint = StructureHint(module=projection, num_heads=heads, head_dim=size, **flags) if kv_heads == 1 else \
            StructureHint(module=projection, num_heads=kv_heads, head_dim=width // kv_heads, **flags)
        return _stamped([hint], layout)
    if heads is None and size:
        heads = max(1, width // parts // size)
    if size is None and heads:
        size = width // (parts * heads)
    if not heads or not size or width != parts * heads * size:
        return []
    return _stamped([StructureHint(module=projection, num_heads=heads, head_dim=size, **flags)], layout)


def _counts(layout: AttentionLayout, module: Any, read: Callable[..., Any] = getattr
            ) -> Tuple[Optional[int], Optional[int]]:
    """(heads, key/value heads) from the attributes ``layout`` names; either may come from the other and
    the queries per key/value head."""
    heads = _first_int(module, layout.num_heads, read)
    kv_heads = _first_int(module, layout.num_key_value_heads, read)
    groups = _first_int(module, layout.kv_groups, read)
    if heads is None and kv_heads and groups:
        heads = kv_heads * groups
    if kv_heads is None and heads and groups and heads % groups == 0:
        kv_heads = heads // groups
    return heads, kv_heads


def _stamped(hints: List[StructureHint], layout: AttentionLayout) -> List[StructureHint]:
    if layout.provider is not None:
        for hint in hints:
            hint._stamp(layout.provider)
    return hints


def _structure(graph: Any, name: str) -> Optional[List[int]]:
    if graph is None:
        return None
    try:
        return list(graph.channel_structure(name))
    except PruningError:  # the projection neither ran nor had its weight used (F.linear on its weight)
        return None


def _split(factors: List[int], limit: Optional[int] = None) -> Tuple[int, int]:
    """(heads, head size) from a projection's channel factors ``[..heads.., head_size]``.

    A head may itself be traced as several factors (interleaved rotary splits it
    into pairs: ``[heads, 8, 2]``); with ``limit``, the head size before pruning,
    the head size is the longest run of trailing factors (the first factor is
    always heads) whose product stays within it.
    """
    if len(factors) == 1:
        return 1, factors[0]
    k, size = len(factors) - 1, factors[-1]
    while limit and k > 1 and size * factors[k - 1] <= limit:
        k -= 1
        size *= factors[k]
    return math.prod(factors[:k]), size


def current_heads(layout: AttentionLayout, name: str, module: Any, graph: Any,
                  out_channels: Callable[[Any], Optional[int]]) -> Optional[Tuple[int, int, int]]:
    """(heads, head size, key/value heads) of ``module`` now, or None when its projections show no heads."""
    prefix = f"{name}." if name else ""
    limit = original_head_size(layout, module, out_channels)
    if layout.fused is None:
        query = _structure(graph, prefix + layout.query)
        key = _structure(graph, prefix + layout.key)
        if not query or not key:
            return None
        heads, size = _split(query, limit)
        return heads, size, _split(key, limit)[0]
    parts = layout.parts
    heads, kv_heads = _counts(layout, module, original_attr)
    if heads and kv_heads and kv_heads < heads and parts == 3 and layout.fused:
        return _grouped_heads(graph, prefix + layout.fused, out_channels(_child(module, layout.fused)), limit,
                              kv_heads)
    factors = _structure(graph, (prefix + layout.fused) if layout.fused else name)
    if parts > 1 and factors and len(factors) > 2 and factors[0] == parts:
        heads, size = _split(factors[1:], limit)
        return heads, size, heads
    if parts > 1 and factors and len(factors) > 2 and factors[-2] == parts:  # interleaved per head: [heads, 3, size]
        return math.prod(factors[:-2]), factors[-1], math.prod(factors[:-2])
    if parts == 1 and factors and len(factors) > 1:
        heads, size = _split(factors)
        return heads, size, heads
    # No head structure traced: the heads are whole, so the count stays and the size follows the width.
    heads = _first_int(module, layout.num_heads)
    width = out_channels(_child(module, layout.fused))
    if heads is None or width is None or width % (parts * heads):
        return None
    return heads, width // (parts * heads), heads


def _grouped_heads(graph: Any, name: str, width: Optional[int], limit: Optional[int],
                   original_kv: int) -> Optional[Tuple[int, int, int]]:
    """(heads, head size, key/value heads) of a fused ``[q | k | v]`` projection with fewer key/value heads.

    Cut apart by slices or a split, its first part is ``[heads.., size]`` (the queries); viewed
    as one tensor they are ``[kv_heads, queries + 2, size]`` (per group) or, with one key/value head,
    ``[heads + 2, size]``. The query heads are what is left of the width after the keys and values.
    """
    if graph is None or width is None:
        return None
    try:
        parts = [list(p) for p in graph.channel_parts(name)]
    except PruningError:
        return None
    if len(parts) > 1 and parts[0]:  # the query part comes first (a single key head may join the list flat)
        heads, size = _split(parts[0], limit)
        rest = width - heads * size
        if rest <= 0 or rest % (2 * size):
            return None
        return heads, size, rest // (2 * size)
    if len(parts) != 1 or not parts[0]:
        return None
    size = _split(parts[0], limit)[1]
    kv_heads = 1 if original_kv == 1 else parts[0][0]
    if width % size or width // size <= 2 * kv_heads:
        return None
    return width // size - 2 * kv_heads, size, kv_heads


def _original_rows(projection: Any, width: int) -> Optional[int]:
    """A projection's output channels before pruning, read from its weight's recorded shape."""
    weight = getattr(projection, "weight", None)
    before = original_shape(projection, "weight")
    if weight is None or before is None:
        return None
    dims = [d for d, n in enumerate(weight.shape) if n == width]
    changed = [d for d in dims if before[d] != weight.shape[d]]
    return before[(changed or dims)[0]] if dims else None


def original_head_size(layout: AttentionLayout, module: Any,
                       out_channels: Callable[[Any], Optional[int]]) -> Optional[int]:
    """The head size before any pruning: a head_dim attribute, else a width attribute or the fused width per head."""
    size = _first_int(module, layout.head_dim, original_attr)
    if size is not None:
        return size
    heads = _first_int(module, layout.num_heads, original_attr)
    if heads is None:
        return None
    for name in layout.width:
        value = original_attr(module, name, None)
        if isinstance(value, int) and value % heads == 0:
            return value // heads
    if layout.fused is not None:
        projection = _child(module, layout.fused)
        width = out_channels(projection)
        rows = _original_rows(projection, width) if width is not None else None
        if rows is not None and rows % (layout.parts * heads) == 0:
            return rows // (layout.parts * heads)
    return None


def update_attention(layout: AttentionLayout, name: str, module: Any, graph: Any,
                     out_channels: Callable[[Any], Optional[int]]) -> None:
    """Set the attributes ``layout`` names on ``module`` (named ``name`` in the graph) from its current heads."""
    counted = current_heads(layout, name, module, graph, out_channels)
    if counted is None:
        return
    heads, size, kv_heads = counted
    original_size = original_head_size(layout, module, out_channels) if layout.scale else None
    values = {"num_heads": heads, "num_key_value_heads": kv_heads, "kv_groups": heads // max(1, kv_heads),
              "head_dim": size, "width": heads * size}
    for field, value in values.items():
        for attr in getattr(layout, field):
            setattr(module, attr, value)
    if layout.scale and original_size and original_size != size:
        setattr(module, layout.scale, original_attr(module, layout.scale) * math.sqrt(original_size / size))


# Per graph: (hub, its generation, {qualified name: layout}), collected once per graph and set of plugins.
_LAYOUTS: "weakref.WeakKeyDictionary[Any, Tuple[Any, int, Dict[str, AttentionLayout]]]" = weakref.WeakKeyDictionary()


def _layouts_by_name(hub: Any, model: Any, graph: Any) -> Dict[str, AttentionLayout]:
    cached = _LAYOUTS.get(graph) if graph is not None else None
    if cached is not None and cached[0] is hub and cached[1] == hub.generation:
        return cached[2]
    names = {id(module): name for name, module in model.named_modules()}
    layouts = {names[id(layout.module)]: layout for layout in hub.attention_layouts(model)
               if id(layout.module) in names}
    if graph is not None:
        try:
            _LAYOUTS[graph] = (hub, hub.generation, layouts)
        except TypeError:  # a graph object that cannot be weakly referenced: no cache
            pass
    return layouts


@hookimpl(tryfirst=True)
def fixup_after_prune(model: Any, modules: Dict[str, Any], graph: Any) -> None:
    """Heads, head size, widths and scale of every attention block a plugin described, after each pruned group."""
    from .._plugins import get_hub

    hub = get_hub()
    layouts = _layouts_by_name(hub, model, graph)
    for name, module in modules.items():
        layout = layouts.get(name)
        if layout is not None:
            update_attention(layout, name, module, graph, hub.out_channels)
