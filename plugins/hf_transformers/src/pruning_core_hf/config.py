"""Keeping a transformers ``config`` in step with the pruned modules.

When every layer has the same shape, the config fields are set so that
``save_pretrained`` / ``from_pretrained`` rebuild the model with stock
transformers. When they differ (global pruning), the config keeps describing
the original architecture and ``config.pruning_core`` says so; save with
:func:`pruning_core_hf.save_pretrained` and load with
:func:`pruning_core_hf.from_pretrained`.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Dict, List, Optional

from torch import nn

from .attention import HEAD_COUNT_ATTRS, HEAD_SIZE_ATTRS, _width, fused_heads, head_size, projections

_HEAD_ATTRS = frozenset(HEAD_COUNT_ATTRS + HEAD_SIZE_ATTRS)

# Config fields this plugin may change; saved with pruned models so loading restores them.
CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "n_embd", "n_inner", "n_head", "embed_dim", "num_heads", "mlp_ratio", "num_hidden_layers",
                 "n_layer", "layer_types", "pruning_core")

# Config-name table: the field that holds the MLP width (GPT-2's n_inner has no intermediate_size alias).
MLP_WIDTH_FIELDS = ("n_inner", "intermediate_size")
MLP_INPUTS = (("gate_proj", "out_features"), ("up_proj", "out_features"), ("fc1", "out_features"),
              ("c_fc", "nf"), ("dense", "out_features"))


def _attention_blocks(model: nn.Module) -> List[nn.Module]:
    # Only modules holding a head count or size can be attention: skip the slower probes on the rest.
    return [m for m in model.modules() if not _HEAD_ATTRS.isdisjoint(vars(m)) and projections(m) is not None]


def _mlp_widths(model: nn.Module) -> List[int]:
    widths = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("mlp", "intermediate"):
            for attr, size_attr in MLP_INPUTS:
                child = getattr(module, attr, None)
                if child is not None and isinstance(getattr(child, size_attr, None), int):
                    widths.append(getattr(child, size_attr))
                    break
    return widths


def _heads(block: nn.Module) -> Dict[str, int]:
    """Heads, key/value heads and head size of an attention block, read off its projections."""
    parts = projections(block)
    size = head_size(block) or head_size(block, True)
    if "fused" in parts:
        heads, kv_heads = fused_heads(block, _width(parts["fused"])[1], size)
        return {"heads": heads, "size": size, "kv_heads": kv_heads}
    return {"heads": _width(parts["q"])[1] // size, "size": size, "kv_heads": _width(parts["k"])[1] // size}


def _uniform(values: List[Any]) -> Optional[Any]:
    return values[0] if values and all(v == values[0] for v in values) else None


ORIGINAL = "_pruning_core_config_original"
FULL_ORIGINAL = "_pruning_core_config_before"  # a copy of the whole config before the first step


def optional_api(model: nn.Module, name: str) -> Any:
    """``model.<name>()`` where the model implements it, else None: transformers' base methods may raise
    ``NotImplementedError`` (``get_input_embeddings`` on vision CNNs), and a fix-up must not fail for that."""
    method = getattr(model, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except (NotImplementedError, AttributeError):
        return None


def fix_config(model: nn.Module) -> None:
    """Set the config fields that describe the pruned model, or keep the original ones and mark it non-uniform."""
    config = getattr(model, "config", None)
    if config is None:
        return
    from .io import warn_on_plain_save

    warn_on_plain_save()  # a non-uniform result must not be saved with plain save_pretrained silently
    if ORIGINAL not in model.__dict__:  # restored with the model's __dict__ if a step is undone
        model.__dict__[ORIGINAL] = {k: getattr(config, k) for k in CONFIG_FIELDS if hasattr(config, k)}
        model.__dict__[FULL_ORIGINAL] = copy.deepcopy(config)
    problems: List[str] = []
    updates: Dict[str, Any] = {}
    hidden = _residual_width(model)
    if _staged(config):
        _swin(model, config, updates, problems)
    else:
        attention = _attention_blocks(model)  # scanned once per call: this runs after every pruning step
        blocks = [_heads(b) for b in attention]
        heads = _uniform([b["heads"] for b in blocks])
        size = _uniform([b["size"] for b in blocks])
        kv_heads = _uniform([b["kv_heads"] for b in blocks])
        if blocks and (heads is None or size is None or kv_heads is None):
            problems.append("attention layers differ in heads or head size")
            heads = None
        widths = _mlp_widths(model)
        width = _uniform(widths)
        if widths and width is None:
            problems.append("MLP widths differ between layers")
        if hidden is not None:
            updates["hidden_size"] = hidden
        if heads is not None:
            updates["num_attention_heads"] = heads
            if hasattr(config, "num_key_value_heads"):
                updates["num_key_value_heads"] = kv_heads
            if _separate_head_dim(attention) and _rebuilds(attention[0], config, dict(updates, head_dim=size)):
                updates["head_dim"] = size  # LLaMA-style blocks read config.head_dim when it is set
            elif hidden is not None and heads * size != hidden:
                problems.append(f"{type(config).__name__} ties the attention width to hidden_size, but heads x "
                                f"head size = {heads * size} and hidden_size = {hidden}")
        if width is not None:
            field = next((f for f in MLP_WIDTH_FIELDS if hasattr(config, f)), None)
            if field is not None:
                updates[field] = width
    problems.extend(_added_parameters(model))
    if problems:
        for key, value in model.__dict__[ORIGINAL].items():
            if key != "pruning_core":
                try:
                    setattr(config, key, value)
                except AttributeError:  # a derived field (Falcon's head_dim is a read-only property)
                    pass
        config.pruning_core = {"uniform": False, "reason": "; ".join(problems)}
        return
    for key, value in updates.items():
        setattr(config, key, value)
    config.pruning_core = {"uniform": True}


def _added_parameters(model: nn.Module) -> List[str]:
    """Parameters pruning added (biases from compensation): a config cannot declare them per layer."""
    from pruning_core.graph.record import added_tensors

    added = [f"{name}.{tensor}" for name, module in model.named_modules() for tensor in added_tensors(module)]
    if not added:
        return []
    more = f" and {len(added) - 3} more" if len(added) > 3 else ""
    return [f"compensation added parameters the config cannot declare ({', '.join(added[:3])}{more})"]


def _separate_head_dim(blocks: List[nn.Module]) -> bool:
    """LLaMA-style attention (with key/value groups) takes its head size from ``config.head_dim``."""
    return bool(blocks) and all(hasattr(b, "num_key_value_groups") for b in blocks)


def _rebuilds(block: nn.Module, config: Any, updates: Dict[str, Any]) -> bool:
    """Whether the block's class, built from the config with ``updates`` (on the meta device), has the
    block's parameter shapes; True when it cannot be built that way (the config is then trusted).

    Blocks with key/value groups may still size their heads from ``hidden_size / heads`` (GPTBigCode);
    such a config cannot express pruned heads, and the saved form must be the plugin's.
    """
    import torch

    trial = copy.deepcopy(config)
    for key, value in updates.items():
        try:
            setattr(trial, key, value)
        except AttributeError:
            return True
    try:
        with torch.device("meta"):
            fresh = type(block)(trial, layer_idx=getattr(block, "layer_idx", 0) or 0)
    except Exception:  # another constructor signature or a validation we cannot satisfy here
        return True
    shapes = {name: tuple(p.shape) for name, p in fresh.named_parameters()}
    return all(shapes.get(name) == tuple(p.shape) for name, p in block.named_parameters())


def hidden_rounding(model: nn.Module) -> List[Any]:
    """Keep every width the config calls ``hidden_size`` a multiple of the head count (transformers 5
    validates ``hidden_size % num_attention_heads``): a hint on each layer producing that width (the
    embeddings or their projection, and layers such as a pooler that the config sizes the same)."""
    from pruning_core import StructureHint

    config = model.config
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not (isinstance(hidden, int) and isinstance(heads, int) and heads > 1 and hidden % heads == 0):
        return []
    hints = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim < 2:
            continue
        width = getattr(module, "embedding_dim", None) or getattr(module, "nf", None) or weight.shape[0]
        if width == hidden:
            hints.append(StructureHint(module=module, round_to=heads))
    return hints


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer: a leaf with a 1-D weight and an epsilon (LayerNorm, RMSNorm variants)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.ndim == 1 and not module._modules and \
        any(isinstance(vars(module).get(a), float) for a in ("eps", "variance_epsilon", "epsilon"))


def _residual_width(model: nn.Module) -> Optional[int]:
    """The width of the residual stream: the most common size of the normalisation layers, else the input
    embeddings' width (ALBERT and ELECTRA embed narrower than their hidden size)."""
    sizes = Counter(m.weight.shape[0] for m in model.modules() if _is_norm(m))
    if sizes:
        return sizes.most_common(1)[0][0]
    return getattr(optional_api(model, "get_input_embeddings"), "embedding_dim", None)


def _staged(config: Any) -> bool:
    """A hierarchical vision config (Swin): per-stage head counts, a first-stage width and an MLP ratio."""
    return isinstance(getattr(config, "num_heads", None), list) and isinstance(getattr(config, "embed_dim", None),
                                                                              int) and hasattr(config, "mlp_ratio")


def _swin(model: nn.Module, config: Any, updates: Dict[str, Any], problems: List[str]) -> None:
    """Swin: stage widths are embed_dim * 2**i, MLPs are mlp_ratio times wider, heads per stage."""
    stages = [m for m in model.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)]
    dims, heads, ratios = [], [], []
    for stage in stages:
        blocks = [m for m in stage.modules() if projections(m) is not None]
        stage_heads = _uniform([_heads(b)["heads"] for b in blocks])
        stage_size = _uniform([_heads(b)["size"] for b in blocks])
        widths = [m.mlp.fc1.out_features for m in stage.blocks] if hasattr(stage, "blocks") else []
        dim = stage.blocks[0].layernorm_before.normalized_shape[0] if hasattr(stage, "blocks") else None
        if stage_heads is None or stage_size is None or _uniform(widths) is None or dim is None:
            problems.append("blocks of a Swin stage differ")
            return
        if stage_heads * stage_size != dim:
            problems.append(f"Swin stage width {dim} != heads x head size {stage_heads * stage_size}")
            return
        dims.append(dim)
        heads.append(stage_heads)
        ratios.append(widths[0] / dim)
    if not dims:
        return
    if any(d != dims[0] * 2 ** i for i, d in enumerate(dims)) or _uniform(ratios) is None:
        problems.append(f"Swin stage widths {dims} are not embed_dim x 2**stage, or MLP ratios differ")
        return
    updates.update({"embed_dim": dims[0], "num_heads": heads, "mlp_ratio": ratios[0],
                    "hidden_size": dims[-1]})


def saved_state(model: nn.Module) -> Optional[Dict[str, Any]]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "pruning_core"):
        return None
    return {key: getattr(config, key) for key in CONFIG_FIELDS if hasattr(config, key)}


def restore_state(model: nn.Module, state: Dict[str, Any]) -> None:
    from .io import warn_on_plain_save

    warn_on_plain_save()
    config = model.config
    for key, value in state.items():
        if key in CONFIG_FIELDS:
            try:
                setattr(config, key, value)
            except AttributeError:  # a derived field (Falcon's head_dim is a read-only property)
                pass
