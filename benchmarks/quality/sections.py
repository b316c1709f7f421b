"""The benchmark's sections by name: how to prepare each bundle, the class that runs it, its table."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple

from . import models, section_digits, section_lm, section_minilm, train


class SectionSpec(NamedTuple):
    prepare: Callable[..., Dict[str, Any]]
    cls: type
    render: Callable[..., List[str]]
    ratios: List[float]


SECTIONS: Dict[str, SectionSpec] = {
    "minilm": SectionSpec(section_minilm.prepare, section_minilm.MiniLMSection, section_minilm.render, [0.3, 0.5]),
    "digits": SectionSpec(section_digits.prepare, section_digits.DigitsSection, section_digits.render, [0.5]),
    "lm": SectionSpec(section_lm.prepare, section_lm.LMSection, section_lm.render, [0.3]),
}

# Tiny settings for a smoke run (--quick): minutes become seconds, numbers mean nothing.
QUICK: Dict[str, Dict[str, Any]] = {
    "minilm": {"n_calibration": 16, "n_heldout": 32, "batch_size": 8},
    "digits": {"n_calibration": 64, "batch_size": 32, "epochs": 2},
    "lm": {"config": models.LMConfig(hidden_size=80, num_layers=1, num_heads=10, head_dim=8, intermediate_size=160),
           "training": train.LMTraining(steps=10, batch_size=4, length=64), "n_calibration": 8,
           "calibration_batch": 4, "n_eval": 8, "eval_length": 64},
}
