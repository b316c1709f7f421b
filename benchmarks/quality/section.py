"""What every benchmark section provides, and the helpers they share.

A section is built in the parent process (``prepare`` returns a *bundle*: plain
tensors, lists and dicts that ``torch.save`` writes and ``torch.load(...,
weights_only=True)`` reads back), so that the Torch-Pruning worker process gets
the very same model weights, calibration batches and evaluation data.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List

import torch
from torch import nn


def call(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on a batch given as a tensor, a tuple of tensors or a keyword dict."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class Section:
    """Base class; subclasses set ``name`` and implement the model-specific parts."""

    name = ""
    title = ""
    # Ratio column label in tables ("ratio" or "MAC target").
    ratio_label = "ratio"

    def __init__(self, bundle: Dict[str, Any]) -> None:
        self.bundle = bundle
        self.calibration: List[Any] = bundle["calibration"]
        self.merged_calibration: Any = bundle["merged_calibration"]
        self.example_inputs: Any = bundle["example_inputs"]
        self._dense: nn.Module | None = None

    # -- model ------------------------------------------------------------------------
    def build_dense(self) -> nn.Module:
        raise NotImplementedError

    def fresh_model(self) -> nn.Module:
        """A deep copy of the dense model (built once per process)."""
        if self._dense is None:
            self._dense = self.build_dense().eval()
        return copy.deepcopy(self._dense)

    def call(self, model: nn.Module, batch: Any) -> Any:
        return call(model, batch)

    # -- what pruning needs -----------------------------------------------------------
    def prepare_row(self, row: Dict[str, Any]) -> Dict[str, Any]:
        """The row as it will be pruned (a section may settle its pruning ratio here)."""
        return row

    def structure(self, library: str, model: nn.Module, row: Dict[str, Any]) -> Dict[str, Any]:
        """Pruner keywords (ratio, heads, ignored layers) for ``library`` on ``model``."""
        raise NotImplementedError

    def fixup(self, library: str, model: nn.Module, pruner: Any) -> None:
        """Attribute fixes after ``step()`` (none by default)."""

    def per_sample_losses(self, model: nn.Module, index: int, sample: int | None = None) -> torch.Tensor:
        """The loss of each sample of calibration batch ``index``, or of that one ``sample`` only."""
        raise NotImplementedError

    def calibration_batch(self, index: int, sample: int | None = None) -> Any:
        """Calibration batch ``index``, or a batch of its one ``sample``."""
        batch = self.calibration[index]
        return batch if sample is None else slice_batch(batch, sample)

    # -- measurement ------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        raise NotImplementedError

    def notes(self) -> List[str]:
        """Lines for the report explaining set-up and fix-ups."""
        return []


def slice_batch(batch: Any, sample: int) -> Any:
    """A batch of one: the ``sample``-th row of every tensor in the batch."""
    if isinstance(batch, dict):
        return {key: value[sample:sample + 1] for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(value[sample:sample + 1] for value in batch)
    return batch[sample:sample + 1]


def batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)):
        return len(batch[0])
    return len(batch)


def batches_of(items: List[Any], size: int) -> Iterable[List[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def kept_heads(dense_weight: torch.Tensor, pruned_weight: torch.Tensor, head_dim: int) -> List[int]:
    """Which heads of a projection survived, found by matching pruned rows to dense rows."""
    distance = torch.cdist(pruned_weight.detach().double(), dense_weight.detach().double())
    return sorted({int(row) // head_dim for row in distance.argmin(1)})


def heads_consistent(pairs: Iterable[tuple], head_dim: int) -> bool:
    """Whether every (dense, pruned) q/k/v triple of a model kept the same heads."""
    for dense_triple, pruned_triple in pairs:
        kept = [kept_heads(d.weight, p.weight, head_dim) for d, p in zip(dense_triple, pruned_triple)]
        if any(k != kept[0] for k in kept):
            return False
    return True
