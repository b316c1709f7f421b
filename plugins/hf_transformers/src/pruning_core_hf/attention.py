"""Attention blocks of transformers models, found by their structure and declared as :class:`AttentionLayout`.

No class or child names are listed. A module is an attention block when it
holds a head count or a head size (the attribute names below are the naming
conventions transformers uses, the plugin's config-name table) and its direct
linear children include either

* three projections (query, key, value: the first three children, in order of
  registration, that read the same input and whose widths are whole heads,
  key and value alike), or
* one fused projection whose width is three equal parts of whole heads (q, k
  and v side by side as in GPT-2, or interleaved per head as in BLOOM and
  GPT-NeoX), or ``heads + 2 x kv_heads`` heads when the block holds fewer
  key/value heads (grouped-query or multi-query attention, read from its
  key/value head count or its queries per key/value head).

The plugin only says where heads and their attributes are; pruning_core derives
each projection's heads from the traced reshape and updates the attributes.
Blocks that hold heads but whose projections cannot be placed (low-rank
projections) are reported by :func:`unplaced`.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from pruning_core import AttentionLayout
from pruning_core.graph.record import original_attr, original_shape

# Config-name table: attribute names transformers uses for a block's head size, head count and widths.
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim", "dim_per_head")
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads", "kv_heads")
# Attributes holding heads x head size: BERT's all_head_size, T5's inner_dim, GPT-2's split_size and embed_dim.
_HEADED = frozenset(HEAD_COUNT_ATTRS)
WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size", "embed_dim")
SCALE_ATTRS = ("scaling", "scale", "inv_norm_factor")
PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))  # kept for callers of 0.1


def _int(module: nn.Module, names: Tuple[str, ...], before: bool = False) -> Optional[int]:
    for attr in names:
        value = original_attr(module, attr, None) if before else vars(module).get(attr)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _width(child: nn.Module, before: bool = False) -> Optional[Tuple[int, int]]:
    """(input, output) width of a linear child (``nn.Linear`` or GPT-2's transposed ``Conv1D``)."""
    weight = getattr(child, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.ndim != 2 or isinstance(child, nn.Embedding):
        return None
    shape = original_shape(child, "weight") if before else list(weight.shape)
    if isinstance(getattr(child, "nf", None), int):
        return shape[0], shape[1]
    return shape[1], shape[0]


def head_size(module: nn.Module, before: bool = False) -> Optional[int]:
    """The block's head size: an attribute, or its query width over its head count."""
    size = _int(module, HEAD_SIZE_ATTRS, before)
    if size is not None:
        return size
    heads = _int(module, HEAD_COUNT_ATTRS, before)
    if heads is None:
        return None
    linear = [w for w in (_width(c, before) for c in module.children()) if w is not None]
    for _, out in linear:
        if out % heads == 0 and out // heads > 1:
            return out // heads if len(linear) < 3 or out == linear[0][1] else None
    return None


def projections(module: nn.Module) -> Optional[Dict[str, Any]]:
    """The q/k/v projections (or the fused one) of an attention block, or None.

    Checked on the current shapes and attributes, and on those before pruning:
    in the middle of a step a projection may be pruned before its block's
    attributes follow.
    """
    if _int(module, HEAD_SIZE_ATTRS + HEAD_COUNT_ATTRS) is None:
        return None
    return _projections(module, False) or _projections(module, True)


def _projections(module: nn.Module, before: bool) -> Optional[Dict[str, Any]]:
    size = head_size(module, before)
    if size is None:
        return None
    linear = [(name, child, w) for name, child in module.named_children() for w in (_width(child, before),)
              if w is not None]
    for start in range(len(linear) - 2):
        (qn, q, qw), (kn, k, kw), (vn, v, vw) = linear[start:start + 3]
        if qw[0] == kw[0] == vw[0] and kw[1] == vw[1] and qw[1] % size == 0 and kw[1] % size == 0 \
                and qw[1] >= kw[1]:
            return {"q": q, "k": k, "v": v, "names": (qn, kn, vn)}
    heads, kv = head_counts(module, before)
    explicit = _int(module, HEAD_SIZE_ATTRS, before) is not None  # unequal parts need a declared head size
    widest = max((w[0] for _, _, w in linear), default=0)  # a fused projection reads the block's input
    for name, child, (width_in, out) in linear:
        if width_in != widest or getattr(module, "is_cross_attention", False):
            continue
        if out % (3 * size) == 0 and (heads is None or out == 3 * heads * size):
            return {"fused": child, "name": name}
        if heads and kv and kv < heads and out == (heads + 2 * kv) * size and explicit:  # [q | k | v], fewer kv
            return {"fused": child, "name": name, "kv_heads": kv}
    return None


def head_counts(module: nn.Module, before: bool = False) -> Tuple[Optional[int], Optional[int]]:
    """(query heads, key/value heads) from the block's attributes: a count, or the other count and the
    queries per key/value head (Phi-3 keeps no query head count on the block)."""
    heads, kv = _int(module, HEAD_COUNT_ATTRS, before), _int(module, KV_HEAD_ATTRS, before)
    groups = _int(module, ("num_key_value_groups",), before)
    if heads is None and kv and groups:
        heads = kv * groups
    if kv is None and heads and groups and heads % groups == 0:
        kv = heads // groups
    return heads, kv


def fused_heads(module: nn.Module, width: int, size: int) -> Tuple[int, int]:
    """(heads, key/value heads) of a fused q/k/v projection ``width`` wide, with heads of ``size``."""
    heads, kv = head_counts(module)
    if heads and kv and kv < heads and (heads + 2 * kv) * size == width:
        return heads, kv
    return width // 3 // size, width // 3 // size


def latent_projections(module: nn.Module) -> List[nn.Module]:
    """Head projections of a low-rank (multi-head latent) attention block, as in DeepSeek-V2/V3.

    Such a block reads its input through narrow projections (the latents) and expands them per head:
    its head projections are the linear children that read a width narrower than the block's input and
    write whole heads. Pruning a head removes its rows in each of them and its columns in the output
    projection; the reshapes there count heads with ``-1``, so the heads follow the weights.
    """
    if projections(module) is not None:
        return []
    heads = _int(module, HEAD_COUNT_ATTRS)
    linear = [(child, w) for child in module.children() for w in (_width(child),) if w is not None]
    widest = max((w[0] for _, w in linear), default=0)
    if heads is None or heads < 2:
        return []
    return [child for child, (width_in, out) in linear if width_in < widest and out % heads == 0 and
            out // heads > 1]


def latent_heads(model: nn.Module) -> List[Any]:
    """Structure hints for the head projections of low-rank attention blocks (see :func:`latent_projections`):
    the blocks' head counts follow the weights (the config is then not stock-expressible)."""
    from pruning_core import StructureHint

    hints = []
    for module in model.modules():
        if not _HEADED.isdisjoint(vars(module)):
            heads = _int(module, HEAD_COUNT_ATTRS)
            hints.extend(StructureHint(module=child, num_heads=heads, prunable_head_dims=False)
                         for child in latent_projections(module))  # per-head parts (rope, nope) stay whole
    return hints


def refresh_latent_heads(model: nn.Module, graph: Any = None) -> None:
    """Low-rank attention blocks: their head count follows their head projections (whole heads go).

    The change is recorded like a pruning operation's (kept on save) and, with ``graph``, undone with the step.
    """
    from pruning_core.graph.record import ensure_record, note_attr_changes, plain_attrs

    for module in model.modules():
        if _HEADED.isdisjoint(vars(module)) or not latent_projections(module):
            continue
        child = latent_projections(module)[0]
        heads, rows, now = _int(module, HEAD_COUNT_ATTRS, before=True), _width(child, True), _width(child)
        if not heads or rows is None or now is None or rows[1] % heads or now[1] % (rows[1] // heads):
            continue
        count = now[1] // (rows[1] // heads)
        if _int(module, HEAD_COUNT_ATTRS) == count:
            continue
        if graph is not None:
            graph.remember(module)
        ensure_record(module)
        before = plain_attrs(module)
        for attr in HEAD_COUNT_ATTRS:
            if _int(module, (attr,)) is not None:
                setattr(module, attr, count)
        note_attr_changes(module, before)


def unplaced(model: nn.Module) -> List[str]:
    """Modules that hold attention heads (a head count and a head size) whose projections were not placed."""
    found = []
    for name, module in model.named_modules():
        sizes = [a for a, v in vars(module).items() if isinstance(v, int) and ("head_dim" in a or "head_size" in a)]
        if _int(module, HEAD_COUNT_ATTRS + KV_HEAD_ATTRS + ("num_key_value_groups",)) and sizes and \
                any(_width(c) is not None for c in module.children()) and projections(module) is None and \
                not latent_projections(module):
            found.append(name)
    return found


# Config-name table: the argument an attention block's forward takes ALiBi biases by, and the config flag
# that turns them off (Falcon's ``alibi``; BLOOM has no flag: always on).
ALIBI_ARG, ALIBI_FLAG = "alibi", "alibi"


def alibi(module: nn.Module, config: Any) -> bool:
    """Whether the block adds ALiBi biases: their slopes are computed in the model's forward from the head
    count alone (head i of n gets ``2 ** (-8 (i + 1) / n)``), so the heads kept after pruning would get
    the slopes of other positions and the function would change. Its heads are therefore kept."""
    try:
        takes = ALIBI_ARG in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return takes and getattr(config, ALIBI_FLAG, True) is not False


def rotary(config: Any) -> bool:
    """Rotary position embeddings tie head dims to frequencies rebuilt from the config on load."""
    return any(getattr(config, attr, None) is not None for attr in ("rope_parameters", "rope_theta", "rope_scaling")) \
        or getattr(config, "position_embedding_type", None) == "rotary"


def layout(module: nn.Module, prunable_head_dims: Optional[bool] = None,
           prunable_heads: Optional[bool] = None) -> Optional[AttentionLayout]:
    """Where ``module`` keeps its heads, if it is an attention block; the core does the arithmetic."""
    parts = projections(module)
    if parts is None:
        return None
    ints = [attr for attr in HEAD_COUNT_ATTRS + KV_HEAD_ATTRS + WIDTH_ATTRS + ("num_key_value_groups",)
            if _int(module, (attr,)) is not None]
    fused = "fused" in parts
    # A scale follows the head size only where it is 1/sqrt(head size) (T5 does not scale: its 1.0 stays).
    size = head_size(module, True)
    scale = next((a for a in SCALE_ATTRS if isinstance(vars(module).get(a), float) and size and
                  abs(original_attr(module, a) * size ** 0.5 - 1) < 1e-6), None)
    names = {"num_heads": tuple(a for a in HEAD_COUNT_ATTRS if a in ints),
             # a fused projection's key/value heads: as many as its heads, or fewer (then they are declared)
             "num_key_value_heads": tuple(a for a in KV_HEAD_ATTRS if a in ints),
             "head_dim": tuple(a for a in HEAD_SIZE_ATTRS if _int(module, (a,)) is not None),
             "kv_groups": tuple(a for a in ("num_key_value_groups",) if a in ints),
             # all_head_size / inner_dim where they exist; GPT-2's split_size and embed_dim with its fused c_attn
             "width": tuple(a for a in WIDTH_ATTRS if a in ints and (a in ("all_head_size", "inner_dim") or fused)),
             "scale": scale}
    if fused:
        if "kv_heads" in parts:  # [q | k | v] of unequal parts: key/value widths (GPTBigCode's kv_dim) stay whole
            prunable_head_dims = False
        return AttentionLayout(module, fused=parts["name"], parts=3, prunable_head_dims=prunable_head_dims,
                               prunable_heads=prunable_heads, **names)
    query, key, value = parts["names"]
    return AttentionLayout(module, query=query, key=key, value=value, prunable_head_dims=prunable_head_dims,
                           prunable_heads=prunable_heads, **names)


def attention_layouts(model: nn.Module) -> List[AttentionLayout]:
    """Every attention block of ``model``. Rotary models keep their head size (frequencies come from the config)."""
    config = getattr(model, "config", None)
    keep_dims = False if rotary(config) else None
    found = (layout(module, keep_dims, False if alibi(module, config) else None) for module in model.modules())
    return [record for record in found if record is not None]
