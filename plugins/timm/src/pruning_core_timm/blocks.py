"""timm building blocks: attention heads, Scale shapes and classifier widths, kept in step after pruning.

Blocks are recognised by their attributes (a ``qkv`` projection with
``num_heads``/``head_dim``, a ``Scale`` with ``shape``...), never by importing timm.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from torch import nn

from pruning_core import StructureHint


def is_fused_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "num_heads", None), int) \
        and isinstance(getattr(module, "head_dim", None), int)


def final_classifiers(model: nn.Module) -> List[nn.Module]:
    """The layers that produce class logits: each classifier (distilled models have two) or its last Linear/Conv."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    candidates = classifier if isinstance(classifier, tuple) else (classifier,)
    finals: List[nn.Module] = []
    for candidate in candidates:
        if isinstance(candidate, (nn.Linear, nn.Conv2d)):
            finals.append(candidate)
        elif isinstance(candidate, nn.Module):
            layers = [m for m in candidate.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            finals.extend(layers[-1:])
    return finals


def structure_hints(model: nn.Module) -> List[StructureHint]:
    hints: List[StructureHint] = []
    for _, module in model.named_modules():
        if is_fused_attention(module) and module.qkv.out_features == 3 * module.num_heads * module.head_dim:
            hints.append(StructureHint(module=module.qkv, num_heads=module.num_heads, head_dim=module.head_dim))
    hints.extend(StructureHint(module=final, keep=True) for final in final_classifiers(model))
    return hints


def _original(module: nn.Module, attr: str) -> Any:
    record = module.__dict__.get("_pruning_record")
    if record is not None and attr in record["attrs"]:
        return record["attrs"][attr]
    return getattr(module, attr)


def fix_attention(name: str, module: nn.Module, graph: Any) -> None:
    if not is_fused_attention(module) or graph is None:
        return
    if graph.ran_as_module(module.qkv):
        factors = graph.channel_structure(f"{name}.qkv" if name else "qkv")
        body = factors[1:] if len(factors) > 1 and factors[0] == 3 else factors
        heads, size = (math.prod(body[:-1]), body[-1]) if len(body) > 1 else (1, body[0])
    else:  # qkv.weight used by F.linear: heads are fixed in code, only head_dim can have changed
        heads = module.num_heads
        size = module.qkv.weight.shape[0] // (3 * heads)
    original = _original(module, "head_dim")
    module.num_heads, module.head_dim = heads, size
    if isinstance(getattr(module, "attn_dim", None), int):
        module.attn_dim = heads * size
    if isinstance(getattr(module, "scale", None), float) and original != size:
        module.scale = _original(module, "scale") * math.sqrt(original / size)


def fix_scale(module: nn.Module) -> None:
    """metaformer ``Scale``: ``x * scale.view(shape)`` needs ``shape`` to follow the parameter."""
    shape = getattr(module, "shape", None)
    scale = getattr(module, "scale", None)
    if isinstance(shape, tuple) and isinstance(scale, nn.Parameter) and shape and shape[0] != scale.numel():
        module.shape = (scale.numel(),) + tuple(shape[1:])


def fix_head(module: nn.Module) -> None:
    """ClassifierHead / NormMlpClassifierHead keep ``in_features`` etc. for ``reset``."""
    kind = type(module).__name__
    if kind not in ("ClassifierHead", "NormMlpClassifierHead", "NormClassifierHead"):
        return
    width = None
    norm = getattr(module, "norm", None)
    if norm is not None and hasattr(norm, "normalized_shape"):
        width = norm.normalized_shape[0]
    elif norm is not None and hasattr(norm, "num_features"):
        width = norm.num_features
    fc = getattr(module, "fc", None)
    pre_logits = getattr(module, "pre_logits", None)
    hidden = getattr(getattr(pre_logits, "fc", None), "out_features", None)
    if width is None and isinstance(fc, nn.Linear):
        width = fc.in_features
    if width is not None and hasattr(module, "in_features"):
        module.in_features = width
    if hidden is not None and hasattr(module, "hidden_size"):
        module.hidden_size = hidden
    if hasattr(module, "num_features"):
        module.num_features = hidden or width or module.num_features


def _entry_width(module: nn.Module) -> Optional[int]:
    """Channels entering ``module``: those of its first layer that has a channel count."""
    for layer in module.modules():
        if isinstance(layer, nn.LayerNorm) and layer.normalized_shape:
            return layer.normalized_shape[0]
        if isinstance(layer, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            return getattr(layer, "num_features", None) or layer.num_channels
        if isinstance(layer, nn.Linear):
            return layer.in_features
        if isinstance(layer, nn.modules.conv._ConvNd):
            return layer.in_channels
    return None


def fix_model(model: nn.Module) -> None:
    """``num_features``, ``head_hidden_size`` and ``embed_dim`` drive ``forward_head`` and ``reset_classifier``."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        finals = final_classifiers(model)
        head = finals[0] if finals else None
    features = _entry_width(head) if isinstance(head, nn.Module) else None
    if features is None:
        return
    hidden = getattr(head, "num_features", features)
    if not isinstance(hidden, int):
        hidden = features
    previous = getattr(model, "num_features", None)
    if isinstance(previous, int):
        model.num_features = features
    if isinstance(getattr(model, "head_hidden_size", None), int):
        model.head_hidden_size = hidden
    patch_embed = getattr(model, "patch_embed", None)
    projection = getattr(patch_embed, "proj", None)
    if isinstance(getattr(model, "embed_dim", None), int):
        if isinstance(projection, nn.Conv2d):
            model.embed_dim = projection.out_channels
        elif model.embed_dim == previous:  # isotropic models (MLP-Mixer) size their new head from embed_dim
            model.embed_dim = features


def fix_all(model: nn.Module, modules: Dict[str, nn.Module], graph: Any) -> None:
    for name, module in modules.items():
        fix_attention(name, module, graph)
        fix_scale(module)
        fix_head(module)
    fix_model(model)
