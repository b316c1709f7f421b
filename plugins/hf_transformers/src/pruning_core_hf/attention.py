"""Attention blocks of transformers models: where their heads are, and keeping attributes in step.

Blocks are recognised by shape, not by class: a module with ``q_proj``/``k_proj``
(or ``query``/``key``) projections and a head size, or a fused ``c_attn``
(GPT-2). This covers LLaMA, Mistral, Qwen2/3, BERT, RoBERTa, ViT and Swin.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from torch import nn

from pruning_core import StructureHint
from pruning_core.graph.record import original_attr

PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size")
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads")


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


def structure_hints(model: nn.Module) -> List[StructureHint]:
    """Heads and head sizes of every attention projection, so users pass no ``num_heads``."""
    keep_dims = False if rotary(getattr(model, "config", None)) else None
    hints: List[StructureHint] = []
    for _, module in model.named_modules():
        parts = projections(module)
        if parts is None:
            continue
        size = head_size(module)
        if "fused" in parts:
            width = parts["fused"].weight.shape[1] // 3
            hints.append(StructureHint(module=parts["fused"], num_heads=max(1, width // size), head_dim=size,
                                       prunable_head_dims=keep_dims))
            continue
        # With grouped-query attention the removable heads are whole key/value groups: each takes its
        # key, value and query heads along, so num_key_value_groups stays the same.
        kv_heads = max(1, parts["k"].out_features // size)
        for key in ("q", "k", "v"):
            projection = parts[key]
            inner = projection.out_features // kv_heads
            hints.append(StructureHint(module=projection, num_heads=kv_heads, head_dim=inner,
                                       prunable_head_dims=keep_dims))
    return hints


def _heads(factors: List[int], skip: int = 0) -> tuple:
    """(heads, head size) from a projection's channel factors ``[..heads.., head_size]``."""
    body = factors[skip:]
    if len(body) == 1:
        return 1, body[0]
    return math.prod(body[:-1]), body[-1]


def fix_attention(name: str, module: nn.Module, graph: Any) -> None:
    """Recompute head counts, head size, scaling and friends from the projections' current structure."""
    parts = projections(module)
    if parts is None or graph is None:
        return
    prefix = f"{name}." if name else ""
    if "fused" in parts:
        heads, size = _heads(graph.channel_structure(prefix + "c_attn"), skip=1)
        kv_heads = heads
    else:
        q_name, k_name, _ = parts["names"]
        heads, size = _heads(graph.channel_structure(prefix + q_name))
        kv_heads, _ = _heads(graph.channel_structure(prefix + k_name))
    original_size = None
    for attr in HEAD_SIZE_ATTRS:
        if hasattr(module, attr):
            original_size = original_attr(module, attr)
            setattr(module, attr, size)
    for attr in HEAD_COUNT_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads)
    if isinstance(getattr(module, "all_head_size", None), int):
        module.all_head_size = heads * size
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        module.num_key_value_groups = heads // max(1, kv_heads)
    if "fused" in parts:
        module.split_size = heads * size
        module.embed_dim = heads * size
    if isinstance(getattr(module, "scaling", None), float) and original_size:
        module.scaling = original_attr(module, "scaling") * math.sqrt(original_size / size)
