"""Attention blocks of transformers models, declared as :class:`pruning_core.AttentionLayout` records.

Blocks are recognised by shape, not by class: a module with ``q_proj``/``k_proj``
(or ``query``/``key``) projections and a head size, or a fused ``c_attn``
(GPT-2). This covers LLaMA, Mistral, Qwen2/3, BERT, RoBERTa, ViT and Swin. The
plugin only says where heads and their attributes are; pruning_core derives
each projection's heads and updates ``num_heads``, ``head_dim``,
``num_key_value_groups``, ``all_head_size``, ``split_size`` and ``scaling``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import nn

from pruning_core import AttentionLayout

PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size")
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads")
# Attributes holding heads x head size: BERT's all_head_size, GPT-2's split_size and embed_dim.
WIDTH_ATTRS = ("all_head_size", "split_size", "embed_dim")


def head_size(module: nn.Module) -> Optional[int]:
    for attr in HEAD_SIZE_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def projections(module: nn.Module) -> Optional[Dict[str, Any]]:
    """The q/k/v projections (or the fused one) of an attention block, or None."""
    if head_size(module) is None:
        return None
    fused = getattr(module, "c_attn", None)
    if fused is not None and hasattr(fused, "weight") and not getattr(module, "is_cross_attention", False):
        return {"fused": fused}
    for q_name, k_name, v_name in PROJECTIONS:
        q, k, v = (getattr(module, n, None) for n in (q_name, k_name, v_name))
        if all(isinstance(p, nn.Linear) for p in (q, k, v)):
            return {"q": q, "k": k, "v": v, "names": (q_name, k_name, v_name)}
    return None


def rotary(config: Any) -> bool:
    """Rotary position embeddings tie head dims to frequencies rebuilt from the config on load."""
    return any(getattr(config, attr, None) is not None for attr in ("rope_parameters", "rope_theta", "rope_scaling")) \
        or getattr(config, "position_embedding_type", None) == "rotary"


def layout(module: nn.Module, prunable_head_dims: Optional[bool] = None) -> Optional[AttentionLayout]:
    """Where ``module`` keeps its heads, if it is an attention block; the core does the arithmetic."""
    parts = projections(module)
    if parts is None:
        return None
    ints = [attr for attr in HEAD_COUNT_ATTRS + WIDTH_ATTRS + ("num_key_value_groups",)
            if isinstance(getattr(module, attr, None), int)]
    names = {"num_heads": tuple(a for a in HEAD_COUNT_ATTRS if a in ints),
             "head_dim": tuple(a for a in HEAD_SIZE_ATTRS if hasattr(module, a)),
             "kv_groups": tuple(a for a in ("num_key_value_groups",) if a in ints),
             # all_head_size where it exists; GPT-2's split_size and embed_dim with its fused c_attn
             "width": tuple(a for a in WIDTH_ATTRS if a in ints and (a == "all_head_size" or "fused" in parts)),
             "scale": "scaling" if isinstance(getattr(module, "scaling", None), float) else None}
    if "fused" in parts:  # GPT-2: q, k and v side by side in c_attn's output
        return AttentionLayout(module, fused="c_attn", parts=3, prunable_head_dims=prunable_head_dims, **names)
    query, key, value = parts["names"]
    return AttentionLayout(module, query=query, key=key, value=value, prunable_head_dims=prunable_head_dims,
                           **names)


def attention_layouts(model: nn.Module) -> List[AttentionLayout]:
    """Every attention block of ``model``. Rotary models keep their head size (frequencies come from the config)."""
    keep_dims = False if rotary(getattr(model, "config", None)) else None
    found = (layout(module, keep_dims) for module in model.modules())
    return [record for record in found if record is not None]
