"""timm building blocks: attention layouts, Scale shapes and classifier widths, kept in step after pruning.

Blocks are recognised by their attributes (a ``qkv`` projection with
``num_heads``/``head_dim``, a ``Scale`` with ``shape``...), never by importing timm.
Attention blocks are declared as :class:`pruning_core.AttentionLayout` records;
pruning_core does their arithmetic.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from torch import nn

from pruning_core import AttentionLayout, SizeAttribute, StructureHint
from pruning_core.graph.record import original_attr


def attention_layout(module: nn.Module) -> Optional[AttentionLayout]:
    """Where ``module`` keeps its heads, if it is attention with a fused, q/k/v-major ``qkv`` projection.

    Covers ViT/DeiT/EVA (``head_dim``), Swin/SwinV2 and BEiT (head size from ``qkv``); the core derives
    the heads and keeps ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` in step. Blocks that put
    heads first (MaxViT, CoAtNet: ``head_first``) are left to the tracer, and so are blocks whose ``qkv``
    is not three equal parts (TinyViT, EfficientFormer): the core finds no heads in them.
    """
    qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(heads, int) or heads < 1 or getattr(module, "head_first", False):
        return None
    return AttentionLayout(
        module, fused="qkv", parts=3, num_heads="num_heads",
        head_dim=tuple(a for a in ("head_dim",) if isinstance(getattr(module, a, None), int)),
        width=tuple(a for a in ("attn_dim",) if isinstance(getattr(module, a, None), int)),
        scale="scale" if isinstance(getattr(module, "scale", None), float) else None)


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


# Blocks whose forward sizes a split or reshape with these int attributes.
SIZE_ATTRIBUTES = {
    "Partial_conv3": ("dim_conv3", "dim_untouched"),  # FasterNet: torch.split(x, [dim_conv3, dim_untouched])
}

HEAD_SIZES = ("head_dim", "dim_head")  # the size of one head, as timm's attention blocks name it
HEADS_WIDTHS = ("dim", "attn_dim")  # the width of all heads together, where a block keeps it


def _int_attr(module: nn.Module, name: str) -> Optional[int]:
    value = module.__dict__.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def attention_sizes(module: nn.Module) -> Optional[SizeAttribute]:
    """The head size and head count of an attention block that reshapes with them, as a :class:`SizeAttribute`.

    ``reshape(B, N, 2, self.num_heads, self.head_dim)`` (PVT-v2, GC-ViT, VOLO...) sizes a view with
    attributes; declared, the head size follows pruning of the projections it cuts and the head count
    is kept up to date. A block qualifies by its shape, not its class: an int ``num_heads``, a head size
    (``head_dim`` or ``dim_head``) and a direct Linear/Conv child whose output is 1, 2 or 3 times
    ``num_heads * head_size`` (q, kv, qkv). A width attribute (``dim``, ``attn_dim``) equal to
    ``num_heads * head_size`` is declared with them.
    """
    heads = _int_attr(module, "num_heads")
    sizes = [name for name in HEAD_SIZES if (_int_attr(module, name) or 0) > 1]
    if heads is None or heads < 1 or not sizes:
        return None
    width = heads * _int_attr(module, sizes[0])
    outputs = {getattr(child, "out_features", None) or getattr(child, "out_channels", None)
               for child in module.children() if isinstance(child, (nn.Linear, nn.Conv2d))}
    if not outputs & {width, 2 * width, 3 * width}:
        return None
    widths = [name for name in HEADS_WIDTHS if _int_attr(module, name) == width]
    return SizeAttribute(module, tuple(sizes + widths), counts=("num_heads",) if heads > 1 else ())


def split_sizes(module: nn.Module) -> Optional[SizeAttribute]:
    """Lists of split sizes kept as attributes (``torch.split(x, self.split_indexes)``), as a :class:`SizeAttribute`.

    Recognised by name (``split`` in it: InceptionNeXt's ``split_indexes``, CoaT's ``channel_splits``) and
    value (a list or tuple of at least two ints); a list the forward never splits with is never bound.
    """
    names = tuple(name for name, value in module.__dict__.items()
                  if "split" in name and isinstance(value, (list, tuple)) and len(value) > 1
                  and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    return SizeAttribute(module, names) if names else None


BLOCK_WIDTHS = ("in_channels", "out_channels")  # kept by blocks (not layers) that size a split with them


def block_widths(module: nn.Module) -> Optional[SizeAttribute]:
    """Channel counts a block (a module with children, not a conv) keeps, as a :class:`SizeAttribute`.

    SKNet's ``torch.split(x, self.in_channels // self.num_paths)``: declared, the part follows pruning
    and ``in_channels`` is set to its new width. A count the forward never sizes a shape with is never bound.
    """
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or next(module.children(), None) is None:
        return None
    names = tuple(name for name in BLOCK_WIDTHS if (_int_attr(module, name) or 0) > 1)
    return SizeAttribute(module, names) if names else None


def structure_hints(model: nn.Module) -> List[Union[AttentionLayout, StructureHint, SizeAttribute]]:
    records: List[Union[AttentionLayout, StructureHint, SizeAttribute]] = []
    for _, module in model.named_modules():
        layout = attention_layout(module)
        if layout is not None:
            records.append(layout)
        for sized in (attention_sizes(module), split_sizes(module), block_widths(module)):
            if sized is not None:
                records.append(sized)
        sizes = SIZE_ATTRIBUTES.get(type(module).__name__)
        if sizes and all(isinstance(getattr(module, name, None), int) for name in sizes):
            records.append(SizeAttribute(module, sizes))  # followed while tracing, set after pruning
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
