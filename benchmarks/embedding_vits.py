"""How far the sweep's embedding-output ViTs prune, with the sweep's options and with heads asked for.

These timm models have no classifier (``num_classes=0``), so their output is the residual stream and
keeps its width. The script prunes each at ratio 0.5 twice, with Torch-Pruning's defaults (what the
sweep runs) and with whole heads (``prune_num_heads=True, prune_head_dims=False,
head_pruning_ratio=0.5``), and prints the fraction of parameters kept as a markdown table.

    python benchmarks/embedding_vits.py --output benchmarks/results/embedding-vits.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Dict, List

import timm
import torch

import pruning_core as tp
import run_info

MODELS = ("vit_tiny_patch16_dinov3_qkvb", "deepseek_vit_412m", "gemma4_vit_167m", "qwen3_vit_88m")
SETTINGS: Dict[str, Dict[str, object]] = {
    "sweep options (Torch-Pruning's defaults)": {},
    "heads asked for": {"prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": 0.5},
}


def kept_fraction(name: str, options: Dict[str, object]) -> str:
    """Parameters kept after pruning ``name`` at ratio 0.5 with ``options``, as a percentage."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    example = torch.randn(1, 3, 224, 224)
    before = sum(p.numel() for p in model.parameters())
    shape = model(example).shape
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, **options)
    pruner.step()
    if model(example).shape != shape:
        return "output shape changed"
    return f"{100 * sum(p.numel() for p in model.parameters()) / before:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="also write the table here")
    args = parser.parse_args()
    lines: List[str] = [
        "# Embedding-output ViTs at ratio 0.5: parameters kept", "",
        f"Command: `python benchmarks/embedding_vits.py --output benchmarks/results/embedding-vits.md`, "
        f"{datetime.date.today()}, pruning_core at {run_info.commit()}, timm {timm.__version__}, torch {torch.__version__}.", "",
        "| model | " + " | ".join(SETTINGS) + " |", "|---|" + "---:|" * len(SETTINGS)]
    for name in MODELS:
        cells = [kept_fraction(name, options) for options in SETTINGS.values()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr)
    text = "\n".join(lines) + "\n"
    run_info.publish(text, args.output)


if __name__ == "__main__":
    main()
