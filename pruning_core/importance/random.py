"""Random scores: a baseline, and the criterion of random pruning."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Importance


class RandomImportance(Importance):
    """Uniform random scores; pass a ``seed`` for reproducible choices."""

    name = "random"

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(group_reduction=None, normalizer=None)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        return torch.rand(group.num_channels, generator=self.generator)


__all__ = ["RandomImportance"]
