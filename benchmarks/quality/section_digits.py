"""(b) A CNN trained here on sklearn's digits, pruned to half its MACs.

Local pruning removes the same fraction of every layer's channels whatever the
criterion, so each library's ``pruning_ratio`` is searched once (bisection on the
MACs counted by torch's FLOP counter, the same counter for both) and used for every
criterion that lands at the same MACs with it; one that does not gets its own search. Accuracy is measured on the held-out test split, with no
fine-tuning and after one epoch of fine-tuning with a fixed recipe.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import data, models, train
from .libs import TORCH_PRUNING
from .section import Section

SEARCH_STEPS = 14


def prepare(n_calibration: int = 256, batch_size: int = 64, seed: int = 0, epochs: int = 4) -> Dict[str, Any]:
    split = data.digits_split(seed)
    start = time.time()
    model = train.train_digits_cnn(split, epochs=epochs, seed=seed)
    train_s = time.time() - start
    order = torch.randperm(len(split["x_train"]), generator=torch.Generator().manual_seed(seed + 1))
    pick = order[:n_calibration]
    images, labels = split["x_train"][pick], split["y_train"][pick]
    calibration = [images[i:i + batch_size] for i in range(0, n_calibration, batch_size)]
    return {"state_dict": model.state_dict(), "split": split, "calibration": calibration,
            "calibration_labels": [labels[i:i + batch_size] for i in range(0, n_calibration, batch_size)],
            "merged_calibration": images, "example_inputs": split["x_test"][:1],
            "info": {"seed": seed, "epochs": epochs, "train_s": train_s, "n_calibration": n_calibration,
                     "batch_size": batch_size, "n_train": len(split["x_train"]), "n_test": len(split["x_test"]),
                     "dense_accuracy": train.accuracy(model, split["x_test"], split["y_test"])}}


class DigitsSection(Section):
    name = "digits"
    title = "(b) CNN trained on sklearn digits, pruned to half its MACs"
    ratio_label = "MAC target"

    def __init__(self, bundle: Dict[str, Any]) -> None:
        super().__init__(bundle)
        self._ratios: Dict[Tuple[str, str, float], Tuple[float, float]] = {}
        self.dense_macs = models.count_macs(self.fresh_model(), self.example_inputs)

    def build_dense(self) -> nn.Module:
        model = models.DigitsCNN()
        model.load_state_dict(self.bundle["state_dict"])
        return model

    def _macs_at(self, row: Dict[str, Any], ratio: float) -> float:
        """MACs (fraction of dense) after pruning a fresh copy as ``row`` says, at ``ratio``."""
        from .libs import PRUNERS

        model = self.fresh_model()
        torch.manual_seed(row["seed"])
        # Compensation changes weights, not shapes: search without it.
        PRUNERS[row["library"]](self, model, {**row, "compensation": "none", "pruning_ratio": ratio})
        return models.count_macs(model, self.example_inputs) / self.dense_macs

    def _bisect(self, row: Dict[str, Any]) -> Tuple[float, float]:
        """(ratio, MACs fraction) closest to the row's MAC target, by bisection on the ratio."""
        target, low, high, best = row["ratio"], 0.0, 0.95, (2.0, 0.0, 1.0)
        for _ in range(SEARCH_STEPS):
            middle = (low + high) / 2
            fraction = self._macs_at(row, middle)
            best = min(best, (abs(fraction - target), middle, fraction))
            low, high = (middle, high) if fraction > target else (low, middle)
        return best[1], best[2]

    def prepare_row(self, row: Dict[str, Any]) -> Dict[str, Any]:
        """Settle the row's ``pruning_ratio``: the library's l2 ratio, or the criterion's own.

        Under local pruning every criterion removes the same counts, so the ratio found
        for l2 serves all; a criterion that lands elsewhere at that ratio (it prunes some
        group by a different amount) gets its own bisection.
        """
        if "pruning_ratio" in row:
            return row
        base_key = (row["library"], "l2", row["ratio"])
        if base_key not in self._ratios:
            self._ratios[base_key] = self._bisect({**row, "criterion": "l2", "seed": 0})
        key = (row["library"], row["criterion"], row["ratio"])
        if key not in self._ratios:
            ratio, fraction = self._ratios[base_key]
            if abs(self._macs_at(row, ratio) - fraction) > 0.005:
                self._ratios[key] = self._bisect(row)
            else:
                self._ratios[key] = (ratio, fraction)
        return {**row, "pruning_ratio": self._ratios[key][0]}

    def structure(self, library: str, model: nn.Module, row: Dict[str, Any]) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"pruning_ratio": row["pruning_ratio"]}
        if library == TORCH_PRUNING:
            kwargs["ignored_layers"] = [model.fc2]  # pruning_core keeps model outputs by itself
        return kwargs

    def per_sample_losses(self, model: nn.Module, index: int, sample: int | None = None) -> torch.Tensor:
        labels = self.bundle["calibration_labels"][index]
        labels = labels if sample is None else labels[sample:sample + 1]
        return F.cross_entropy(model(self.calibration_batch(index, sample)), labels, reduction="none")

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        split = self.bundle["split"]
        result = {"accuracy": train.accuracy(model, split["x_test"], split["y_test"]),
                  "macs_fraction": models.count_macs(model, self.example_inputs) / self.dense_macs}
        tuned = train.train_classifier(copy.deepcopy(model), split["x_train"], split["y_train"], epochs=1,
                                       lr=1e-3, seed=self.bundle["info"]["seed"] + 2)
        result["accuracy_ft"] = train.accuracy(tuned, split["x_test"], split["y_test"])
        return result

    def notes(self) -> List[str]:
        info = self.bundle["info"]
        return [
            f"Data: `sklearn.datasets.load_digits`, stratified split with seed {info['seed']}: {info['n_train']} "
            f"training and {info['n_test']} test images. Model: 3 conv-BN-ReLU stages (32/64/128 channels), "
            f"flatten, 2 linear layers; trained {info['epochs']} epochs with Adam in {info['train_s']:.1f} s; dense "
            f"test accuracy {100 * info['dense_accuracy']:.1f}%.",
            f"Calibration: {info['n_calibration']} training images in batches of {info['batch_size']} (labels used "
            "by taylor/hessian's cross-entropy). Fine-tuning: one epoch of Adam (lr 1e-3, batch 64, fixed shuffle) "
            "on the training split.",
            "MACs: `torch.utils.flop_counter` FLOPs / 2 on a 1x1x8x8 input, the same counter for both libraries. "
            f"Each library's `pruning_ratio` was found by bisection ({SEARCH_STEPS} steps, l2 criterion) to land "
            "closest to the target; local pruning makes the MACs independent of the criterion, and a criterion "
            "that lands elsewhere at that ratio gets its own bisection (the `pruning_ratio` column; Torch-Pruning's "
            "activation criterion does, because it scores conv3's 128 channels with fc1's 512 flattened inputs). "
            "Torch-Pruning "
            "is given "
            "`ignored_layers=[fc2]` (the classifier); pruning_core keeps model outputs by itself.",
        ]


TARGET_POINTS = 10.0


def render(table: Dict[Any, Any], ratios: List[float], info: Dict[str, Any]) -> List[str]:
    """The section's markdown table, then the target line."""
    from . import report as r

    lines = r.section_table(table, ratios, "MAC target", [
        ("pruning_ratio", lambda e: r.fmt(e, "pruning_ratio", 3)),
        ("MACs kept", lambda e: r.fmt(e, "macs_fraction", 1, 100.0, "%")),
        ("params removed", r.params_removed),
        ("accuracy, no fine-tuning", lambda e: r.fmt(e, "accuracy", 1, 100.0, "%")),
        ("accuracy, 1 epoch", lambda e: r.fmt(e, "accuracy_ft", 1, 100.0, "%"))])
    lines.append("")
    lines.append(f"Dense test accuracy: {100 * info['dense_accuracy']:.1f}%.")
    lines.append("")
    for ratio in ratios:
        ours, theirs = r.best(table, r.OURS, ratio, "accuracy"), r.best(table, r.TORCH_PRUNING, ratio, "accuracy")
        if ours is None or theirs is None:
            lines.append(f"- Target at MAC target {ratio}: cannot be judged, a library has no row that ran.")
            continue
        gap = 100 * (ours.mean("accuracy") - theirs.mean("accuracy"))
        verdict = "met" if gap >= TARGET_POINTS else "missed"
        lines.append(f"- Target: with no fine-tuning, pruning_core at least {TARGET_POINTS:.0f} points above "
                     f"Torch-Pruning's best. pruning_core best {100 * ours.mean('accuracy'):.1f}% ({r.name(ours)}), "
                     f"Torch-Pruning best {100 * theirs.mean('accuracy'):.1f}% ({r.name(theirs)}): "
                     f"{gap:+.1f} points. **{verdict}**.")
        headroom = 100 * (info["dense_accuracy"] - theirs.mean("accuracy"))
        if verdict == "missed" and headroom < TARGET_POINTS:
            lines.append(f"  What limits it: the dense model scores {100 * info['dense_accuracy']:.1f}%, so a pruned "
                         f"model as good as the dense one is only {headroom:.1f} points above Torch-Pruning's best; "
                         f"pruning_core's best is {100 * info['dense_accuracy'] - 100 * ours.mean('accuracy'):.1f} "
                         f"points below the dense model.")
    return lines
