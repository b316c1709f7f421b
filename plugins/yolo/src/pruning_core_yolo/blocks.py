"""Ultralytics building blocks: what the pruner must keep, and the attributes forwards read.

Blocks are recognised by class name and module path, never by importing ultralytics.
"""

from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

from pruning_core import AttentionLayout, StructureHint

HEADS = ("Detect", "Segment", "Pose", "OBB", "v10Detect", "YOLOEDetect", "WorldDetect")
# Blocks whose ``cv1`` output is split in two halves of ``c`` channels (``chunk(2)`` or ``split((c, c))``).
SPLIT_BLOCKS = ("C2f", "C3k2", "C2PSA", "C2fPSA", "C2fAttn", "C2fCIB", "RepNCSPELAN4", "ELAN1")


def is_ultralytics(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ultralytics.")


def _kind(module: nn.Module) -> str:
    return type(module).__name__ if is_ultralytics(module) else ""


def structure_hints(model: nn.Module) -> List[StructureHint]:
    hints: List[StructureHint] = []
    checked = False
    for module in model.modules():
        kind = _kind(module)
        if kind and not checked:
            from .version_check import check_ultralytics_version

            check_ultralytics_version()
            checked = True
        if kind in HEADS:
            # The last convolution of each box/class branch predicts; its channels are the output format.
            for branch in list(getattr(module, "cv2", [])) + list(getattr(module, "cv3", [])) + \
                    list(getattr(module, "cv4", [])):
                convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
                hints.extend(StructureHint(module=conv, keep=True) for conv in convs[-1:])
        elif kind in SPLIT_BLOCKS and isinstance(getattr(module, "c", None), int):
            conv = getattr(getattr(module, "cv1", None), "conv", None)
            if isinstance(conv, nn.Conv2d) and conv.out_channels == 2 * module.c:
                # split((c, c)) spells the sizes out: declare the halves so they shrink together.
                hints.append(StructureHint(module=conv, out_channel_groups=2))
    return hints


def attention_layouts(model: nn.Module) -> List[AttentionLayout]:
    """YOLO11's ``Attention`` is pruned as one layer whose channels are its value heads: the core derives
    its heads and keeps ``head_dim`` in step. Every head loses the same channels; heads stay."""
    return [AttentionLayout(module, fused="", parts=1, num_heads="num_heads", head_dim="head_dim",
                            prunable_heads=False, prunable_head_dims=True)
            for module in model.modules()
            if _kind(module) == "Attention" and hasattr(module, "key_dim") and hasattr(module, "head_dim")]


def fix_split_block(module: nn.Module) -> None:
    """``c`` is half of ``cv1``'s outputs; ``forward_split`` (used for export) reads it."""
    conv = getattr(getattr(module, "cv1", None), "conv", None)
    if _kind(module) in SPLIT_BLOCKS and isinstance(getattr(module, "c", None), int) and isinstance(conv, nn.Conv2d):
        module.c = conv.out_channels // 2


def fix_all(modules: Dict[str, Any]) -> None:
    for module in modules.values():
        fix_split_block(module)
