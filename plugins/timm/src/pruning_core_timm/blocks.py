"""timm building blocks: attention layouts, Scale shapes and classifier widths, kept in step after pruning.

Blocks are recognised by their attributes (a ``qkv`` projection with
``num_heads``/``head_dim``, a ``Scale`` with ``shape``...), never by importing timm.
Attention blocks are declared as :class:`pruning_core.AttentionLayout` records;
pruning_core does their arithmetic.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Union

from torch import nn

from pruning_core import AttentionLayout, SizeAttribute, StructureHint
from pruning_core.graph.record import original_attr


def _projection(module: nn.Module, name: str) -> Optional[str]:
    """The path of the ``Linear`` that child ``name`` is or wraps (Gemma 4's ``q_proj.linear``)."""
    child = getattr(module, name, None)
    if isinstance(child, nn.Linear):
        return name
    if isinstance(child, nn.Module):
        linears = [path for path, m in child.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) == 1:
            return f"{name}.{linears[0]}"
    return None


def _int_names(module: nn.Module, *names: str) -> tuple:
    """Those of ``names`` that are int attributes of ``module`` (the optional fields of a layout)."""
    return tuple(n for n in names if isinstance(getattr(module, n, None), int)
                 and not isinstance(getattr(module, n), bool))


def _scale_name(module: nn.Module) -> Optional[str]:
    return "scale" if isinstance(getattr(module, "scale", None), float) else None


def _separate_projections_layout(module: nn.Module) -> Optional[AttentionLayout]:
    """Attention with ``q_proj``/``k_proj``/``v_proj`` and int ``num_heads``/``head_dim`` attributes
    (timm's ``AttentionRope`` without ``qkv``, Gemma 4's vision attention)."""
    paths = [_projection(module, name) for name in ("q_proj", "k_proj", "v_proj")]
    # Sizes before pruning: layouts are collected again after the first group is removed.
    heads, head_dim = _original(module, "num_heads"), _original(module, "head_dim")
    if None in paths or _int_names(module, "num_heads", "head_dim") != ("num_heads", "head_dim"):
        return None
    query = module.get_submodule(paths[0])
    if original_attr(query, "out_features", query.out_features) != heads * head_dim:
        return None
    return AttentionLayout(
        module, query=paths[0], key=paths[1], value=paths[2], num_heads="num_heads",
        num_key_value_heads=_int_names(module, "num_kv_heads"), kv_groups=_int_names(module, "num_kv_groups"),
        head_dim="head_dim", width=_int_names(module, "attn_dim"), scale=_scale_name(module))


def attention_layout(module: nn.Module) -> Optional[AttentionLayout]:
    """Where ``module`` keeps its heads, if it is attention with a fused, q/k/v-major ``qkv`` projection
    or with separate ``q_proj``/``k_proj``/``v_proj`` projections.

    Covers ViT/DeiT/EVA (``head_dim``), Swin/SwinV2 and BEiT (head size from ``qkv``); the core derives
    the heads and keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` in step. Blocks that put
    heads first (MaxViT, CoAtNet: ``head_first``) are left to the tracer, and so are blocks whose ``qkv``
    is not three equal parts (TinyViT, EfficientFormer): the core finds no heads in them.
    """
    if getattr(module, "head_first", False):
        return None
    qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
    if qkv is None:
        return _separate_projections_layout(module)
    if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or heads < 1:
        return None
    return AttentionLayout(module, fused="qkv", parts=3, num_heads="num_heads", head_dim=_int_names(module, "head_dim"),
                           width=_int_names(module, "attn_dim"), scale=_scale_name(module))


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


SIZE_NAME = re.compile(r"dim|channels|chs")  # dim, pdim, qk_dim, head_dim, dim_conv3, in_channels, out_chs...
LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          nn.Embedding)  # their handlers follow their own size attributes


def _int_attr(module: nn.Module, name: str) -> Optional[int]:
    value = module.__dict__.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _head_count(module: nn.Module, sizes: List[str]) -> Optional[str]:
    """``num_heads`` when ``module`` is attention cut into that many heads of a declared head size.

    It qualifies by shape, not class: a direct Linear/Conv child whose output is 1, 2 or 3 times
    ``num_heads * head_dim`` (q, kv, qkv).
    """
    heads = _int_attr(module, "num_heads")
    outputs = {getattr(child, "out_features", None) or getattr(child, "out_channels", None)
               for child in module.children() if isinstance(child, (nn.Linear, nn.Conv2d))}
    for name in ("head_dim", "dim_head"):
        if heads and heads > 1 and name in sizes and outputs & {k * heads * module.__dict__[name] for k in (1, 2, 3)}:
            return "num_heads"
    return None


def block_sizes(module: nn.Module) -> Optional[SizeAttribute]:
    """The sizes a block keeps as attributes, declared as a :class:`SizeAttribute` so they follow pruning.

    Recognised by name and value, never by class: ints named like a width (``dim``, ``pdim``, ``head_dim``,
    ``dim_conv3``, ``in_channels``...: PVT-v2's and GC-ViT's ``reshape(B, N, self.num_heads, self.head_dim)``,
    SHViT's ``split(x, [self.pdim, self.dim - self.pdim])``, SKNet's ``split(x, self.in_channels // paths)``,
    FasterNet's ``split(x, [self.dim_conv3, self.dim_untouched])``), lists of ints named like split sizes
    (InceptionNeXt's ``split_indexes``, CoaT's ``channel_splits``), and ``num_heads`` of attention as a count.
    An attribute the forward never sizes a shape with follows the module's own weights of its size, if any.
    """
    if isinstance(module, LAYERS):
        return None
    sizes = [name for name in module.__dict__ if SIZE_NAME.search(name) and (_int_attr(module, name) or 0) > 1]
    sizes += [name for name, value in module.__dict__.items()
              if "split" in name and isinstance(value, (list, tuple)) and len(value) > 1
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)]
    count = _head_count(module, sizes)
    return SizeAttribute(module, tuple(sizes), counts=(count,) if count else ()) if sizes else None


def structure_hints(model: nn.Module) -> List[Union[AttentionLayout, StructureHint, SizeAttribute]]:
    records: List[Union[AttentionLayout, StructureHint, SizeAttribute]] = []
    for _, module in model.named_modules():
        layout = attention_layout(module)
        if layout is not None:
            records.append(layout)
        sized = block_sizes(module) if module is not model else None  # the model's widths: fix_model
        if sized is not None:
            records.append(sized)  # followed while tracing, set after pruning
        if type(module).__name__ == "SelectiveKernelAttn" and isinstance(getattr(module, "num_paths", None), int):
            # fc_select's output is viewed as (paths, channels): one attention map per kernel path.
            records.append(StructureHint(module=module.fc_select, out_channel_groups=module.num_paths))
    records.extend(StructureHint(module=final, keep=True) for final in final_classifiers(model))
    records.extend(block_stack_hints(model))
    return records


def block_stack_hints(model: nn.Module) -> List[StructureHint]:
    """``blocks`` (ViT, MLP-Mixer...) or else ``stages`` as a stack, for block-by-block calibration."""
    from pruning_core.records import BlockStack

    for attr in ("blocks", "stages"):
        stack = getattr(model, attr, None)
        if isinstance(stack, (nn.Sequential, nn.ModuleList)) and len(stack) > 1:
            return [BlockStack(module=stack)]
    return []


def _original(module: nn.Module, attr: str) -> Any:
    return original_attr(module, attr, None)


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
        width = fc.in_features // _pool_multiplier(module)
    if width is not None and hasattr(module, "in_features"):
        module.in_features = width
    if hidden is not None and hasattr(module, "hidden_size"):
        module.hidden_size = hidden
    if hasattr(module, "num_features"):
        module.num_features = hidden or width or module.num_features


def _pool_multiplier(*owners: Any) -> int:
    """How many values pooling makes of one channel (2 for timm's ``catavgmax``), from a ``global_pool``."""
    for owner in owners:
        feat_mult = getattr(getattr(owner, "global_pool", None), "feat_mult", None)
        if callable(feat_mult):
            value = feat_mult()
            if isinstance(value, int) and value > 0:
                return value
    return 1


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
    entry = _entry_width(head) if isinstance(head, nn.Module) else None
    if entry is None:
        return
    features = entry // _pool_multiplier(model, head)
    hidden = getattr(head, "num_features", features)
    if not isinstance(hidden, int):
        hidden = features
    previous = getattr(model, "num_features", None)
    conv_head = getattr(model, "conv_head", None)
    multiplier = _pool_multiplier(model)
    if (isinstance(conv_head, nn.Conv2d) and isinstance(previous, int)
            and _original(model, "num_features") == _original(conv_head, "in_channels") // multiplier):
        # MobileNetV3, GhostNet: pooling, then conv_head widens num_features to head_hidden_size.
        features, hidden = conv_head.in_channels // multiplier, entry
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


def fix_all(model: nn.Module, modules: Dict[str, nn.Module]) -> None:
    """After each pruned group (attention attributes are the core's, from the declared layouts)."""
    for module in modules.values():
        fix_scale(module)
        fix_head(module)
    fix_model(model)
