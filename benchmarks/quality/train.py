"""Training the benchmark's own models: the digits CNN (seconds) and the byte-level LM (cached on disk)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import data, models

CACHE_DIR = os.path.join("build", "quality-cache")


@dataclasses.dataclass(frozen=True)
class LMTraining:
    steps: int = 300
    batch_size: int = 16
    length: int = 128
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 0
    heldout_fraction: float = 0.1


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                     seed: int, batch_size: int = 64) -> nn.Module:
    """Adam on cross-entropy with a seeded shuffle: the same recipe for training and fine-tuning."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def train_digits_cnn(split: Dict[str, torch.Tensor], epochs: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = models.DigitsCNN()
    return train_classifier(model, split["x_train"], split["y_train"], epochs=epochs, lr=2e-3, seed=seed)


def _source_hash(*objects: Any) -> str:
    text = "".join(inspect.getsource(o) for o in objects)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def lm_cache_key(config: models.LMConfig, training: LMTraining) -> str:
    """A hash of everything the trained weights depend on: settings, code, corpus, versions."""
    settings = {"config": dataclasses.asdict(config), "training": dataclasses.asdict(training),
                "code": _source_hash(models, train_lm_uncached), "python": platform.python_version(),
                "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def lm_corpus(training: LMTraining) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, int]]:
    """(training bytes, held-out bytes, counts) from the standard library's source files."""
    train_files, heldout_files = data.file_split(data.stdlib_python_files(), training.heldout_fraction)
    train_stream, heldout_stream = data.byte_stream(train_files), data.byte_stream(heldout_files)
    counts = {"train_files": len(train_files), "heldout_files": len(heldout_files),
              "train_bytes": len(train_stream), "heldout_bytes": len(heldout_stream)}
    return train_stream, heldout_stream, counts


def train_lm_uncached(config: models.LMConfig, training: LMTraining, stream: torch.Tensor,
                      log: Callable[[str], None]) -> nn.Module:
    """AdamW with linear warm-up and cosine decay on random windows of the training bytes."""
    torch.manual_seed(training.seed)
    model = models.TinyLlama(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": training.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=training.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(training.seed)
    model.train()
    start = time.time()
    for step in range(training.steps):
        progress = step / max(training.steps - 1, 1)
        warm = min(1.0, (step + 1) / training.warmup)
        for group in optimizer.param_groups:
            group["lr"] = training.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        starts = torch.randint(0, len(stream) - training.length - 1, (training.batch_size,), generator=generator)
        batch = torch.stack([stream[s:s + training.length + 1] for s in starts.tolist()]).long()
        loss = models.lm_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step == training.steps - 1:
            log(f"  LM training step {step + 1}/{training.steps}: loss {loss.item():.3f} nats/byte "
                f"({time.time() - start:.0f} s)")
    return model.eval()


def trained_lm(config: models.LMConfig, training: LMTraining, stream: torch.Tensor,
               log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
               cache_dir: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The trained LM, from the cache when its key matches; returns (model, info)."""
    cache_dir = cache_dir or CACHE_DIR
    key = lm_cache_key(config, training)
    path = os.path.join(cache_dir, f"tiny-llama-{key}.pt")
    if os.path.exists(path):
        saved = torch.load(path, weights_only=True)
        model = models.TinyLlama(config)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {"cached": True, "train_s": saved["train_s"], "path": path,
                              "threads": saved["threads"]}
    start = time.time()
    model = train_lm_uncached(config, training, stream, log)
    seconds = time.time() - start
    os.makedirs(cache_dir, exist_ok=True)
    partial = path + ".partial"
    torch.save({"state_dict": model.state_dict(), "train_s": seconds, "threads": torch.get_num_threads()}, partial)
    os.replace(partial, path)
    return model, {"cached": False, "train_s": seconds, "path": path, "threads": torch.get_num_threads()}
