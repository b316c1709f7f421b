"""(c) A Llama-shaped byte-level LM trained here on the standard library's sources.

30% of the attention heads and of the FFN width are removed; the hidden size is
kept. Quality is the perplexity (per byte) on windows of held-out files, which
were never seen in training or calibration.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from . import data, models, train
from .section import Section, heads_consistent


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            logits = model(chunk[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def prepare(config: models.LMConfig | None = None, training: train.LMTraining | None = None,
            n_calibration: int = 32, calibration_length: int = 128, calibration_batch: int = 8,
            n_eval: int = 64, eval_length: int = 256, cache_dir: str | None = None) -> Dict[str, Any]:
    config = config or models.LMConfig()
    training = training or train.LMTraining()
    train_stream, heldout_stream, counts = train.lm_corpus(training)
    model, trained = train.trained_lm(config, training, train_stream, cache_dir=cache_dir)
    # Calibration windows come from the training files, with a seed other than training's.
    windows = data.random_windows(train_stream, n_calibration, calibration_length, seed=training.seed + 1)
    calibration = [windows[i:i + calibration_batch] for i in range(0, n_calibration, calibration_batch)]
    heldout = data.even_windows(heldout_stream, n_eval, eval_length + 1)
    info = {"config": dataclasses.asdict(config), "training": dataclasses.asdict(training), **counts,
            **{k: v for k, v in trained.items() if k != "path"}, "cache_file": trained["path"],
            "params": models.count_params(model), "n_calibration": n_calibration,
            "calibration_length": calibration_length, "n_eval": n_eval, "eval_length": eval_length,
            "dense_perplexity": perplexity(model, heldout)}
    return {"state_dict": model.state_dict(), "calibration": calibration, "merged_calibration": windows,
            "example_inputs": calibration[0][:1], "heldout": heldout, "info": info}


class LMSection(Section):
    name = "lm"
    title = "(c) Llama-shaped byte-level LM trained on the standard library: 30% of heads and FFN width"

    def build_dense(self) -> nn.Module:
        model = models.TinyLlama(models.LMConfig(**self.bundle["info"]["config"]))
        model.load_state_dict(self.bundle["state_dict"])
        return model

    def structure(self, library: str, model: nn.Module, row: Dict[str, Any]) -> Dict[str, Any]:
        ratio = row["ratio"]
        heads: Dict[nn.Module, int] = {}
        ignored: List[nn.Module] = [model.embed_tokens, model.lm_head]
        for layer in model.layers:
            attention = layer.self_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                heads[projection] = projection.out_features // attention.head_dim
            # The layers that write the residual stream are ignored, so the hidden size stays.
            ignored += [attention.o_proj, layer.mlp.down_proj]
        return {"pruning_ratio": ratio, "num_heads": heads, "prune_num_heads": True, "prune_head_dims": False,
                "head_pruning_ratio": ratio, "ignored_layers": ignored}

    def per_sample_losses(self, model: nn.Module, index: int, sample: int | None = None) -> torch.Tensor:
        batch = self.calibration_batch(index, sample)
        logits = model(batch)[:, :-1]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
        return losses.view(len(batch), -1).mean(1)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        dense = self.fresh_model()
        triples = [((d.self_attn.q_proj, d.self_attn.k_proj, d.self_attn.v_proj),
                    (p.self_attn.q_proj, p.self_attn.k_proj, p.self_attn.v_proj))
                   for d, p in zip(dense.layers, model.layers)]
        value = perplexity(model, self.bundle["heldout"])
        return {"perplexity": value, "increase": value - self.bundle["info"]["dense_perplexity"],
                "heads_consistent": float(heads_consistent(triples, dense.config.head_dim))}

    def notes(self) -> List[str]:
        info = self.bundle["info"]
        config, training = info["config"], info["training"]
        how = "loaded from the cache" if info["cached"] else "trained in this run"
        return [
            f"Model: `benchmarks/quality/models.py` TinyLlama, {info['params'] / 1e6:.2f} M parameters: "
            f"{config['num_layers']} layers, hidden {config['hidden_size']}, {config['num_heads']} heads of "
            f"{config['head_dim']}, SwiGLU FFN {config['intermediate_size']}, RMSNorm, rotary embeddings with "
            "transformers' `rotate_half`, byte vocabulary. Written in plain PyTorch so that both libraries prune "
            "the identical module tree: Torch-Pruning 1.6.1's set-up never finishes on transformers' Llama unless "
            "q/k/v are excluded, which would leave it no heads to prune. It runs on this one; every row checks that "
            "q, k and v kept the same heads. Heads are read from tensor shapes, so neither library needs "
            "attribute fix-ups.",
            f"Corpus: the standard library's `.py` files (tests excluded), split by a hash of the path: "
            f"{info['train_files']} training files ({info['train_bytes'] / 1e6:.1f} MB), {info['heldout_files']} "
            f"held-out files ({info['heldout_bytes'] / 1e6:.1f} MB). Training: {training['steps']} AdamW steps of "
            f"{training['batch_size']} x {training['length']} bytes, {info['train_s']:.0f} s on "
            f"{info['threads']} torch thread(s) ({how}, `{info['cache_file']}`).",
            f"Calibration: {info['n_calibration']} windows of {info['calibration_length']} bytes from training files "
            f"(in {len(self.calibration)} batches). Perplexity: per byte, on {info['n_eval']} evenly spaced "
            f"windows of {info['eval_length']} bytes from the held-out files; dense "
            f"{info['dense_perplexity']:.3f}.",
            "Both libraries: `pruning_ratio=0.3, head_pruning_ratio=0.3, prune_num_heads=True, prune_head_dims=False`, "
            "`num_heads` for q/k/v, and `ignored_layers` = embeddings, lm_head, every o_proj and down_proj (they "
            "write the residual stream, so the hidden size stays).",
        ]


def render(table: Dict[Any, Any], ratios: List[float], info: Dict[str, Any]) -> List[str]:
    """The section's markdown table, then the target line."""
    from . import report as r

    dense = info["dense_perplexity"]
    lines = r.section_table(table, ratios, "ratio", [
        ("params removed", r.params_removed), ("perplexity", lambda e: r.fmt(e, "perplexity", 3)),
        ("increase", lambda e: r.fmt(e, "increase", 3))])
    lines += ["", f"Dense held-out perplexity: {dense:.3f} (per byte).", ""]
    for ratio in ratios:
        ours = r.best(table, r.OURS, ratio, "perplexity", higher=False)
        theirs = r.best(table, r.TORCH_PRUNING, ratio, "perplexity", higher=False)
        if ours is None or theirs is None:
            lines.append(f"- Target at ratio {ratio}: cannot be judged, a library has no row that ran.")
            continue
        ours_up, theirs_up = ours.mean("perplexity") - dense, theirs.mean("perplexity") - dense
        verdict = "met" if ours_up <= 0.5 * theirs_up else "missed"
        share = f": ratio {ours_up / theirs_up:.2f}" if theirs_up > 0 else ""
        lines.append(f"- Target at ratio {ratio}: pruning_core's perplexity increase at most half of Torch-Pruning's "
                     f"best. pruning_core best +{ours_up:.3f} ({r.name(ours)}), Torch-Pruning best +{theirs_up:.3f} "
                     f"({r.name(theirs)}){share}. **{verdict}**.")
    lines += [f"- Parameters {r.parameter_match(table, ratio)}." for ratio in ratios]
    return lines
