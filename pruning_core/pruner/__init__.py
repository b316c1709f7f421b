"""High-level pruners: ``tp.pruner.BasePruner`` and the algorithms registered by name."""

from __future__ import annotations

from typing import Any, List

from ..layer_handler import BasePruningFunc
from .algorithms import BNScalePruner, GroupNormPruner, GrowingRegPruner, MagnitudePruner, RandomPruner
from .base import BasePruner, resolve_importance
from .options import PruningOptions
from .planning import PruningWarning
from .scheduler import geometric_scheduler, linear_scheduler


def names() -> List[str]:
    """Names of every registered pruning algorithm, built-in or from plugins."""
    from .._plugins import get_hub

    return get_hub().pruners().names()


def create(name: str, model: Any, example_inputs: Any, **kwargs: Any) -> BasePruner:
    """Build the pruner registered as ``name`` (close matches are suggested on a typo)."""
    from .._plugins import get_hub

    return get_hub().pruners().get(name).factory(model, example_inputs, **kwargs)


__all__ = ["BasePruner", "BasePruningFunc", "MagnitudePruner", "RandomPruner", "BNScalePruner", "GroupNormPruner", "GrowingRegPruner",
           "PruningOptions", "PruningWarning", "linear_scheduler", "geometric_scheduler", "resolve_importance",
           "names", "create"]
