"""High-level pruners: ``tp.pruner.BasePruner`` and the algorithms registered by name."""

from __future__ import annotations

from typing import Any, List

from ..layer_handler import BasePruningFunc
from .algorithms import BNScalePruner, GroupNormPruner, GrowingRegPruner, MagnitudePruner, RandomPruner
from .base import BasePruner, resolve_importance
from .options import PruningOptions
from .planning import PruningWarning
from .scheduler import geometric_scheduler, linear_scheduler

# Torch-Pruning's earlier name for BasePruner, still used by many scripts.
MetaPruner = BasePruner


def __getattr__(name: str) -> Any:
    # Torch-Pruning also reaches the low-level functions through ``tp.pruner.function`` and
    # ``tp.pruner.prune_*``; imported on first use so that importing the pruners stays light.
    if name == "function" or name.startswith("prune_"):
        from .. import function

        if name == "function":
            return function
        if name in function.__all__:
            return getattr(function, name)
    raise AttributeError(f"module 'pruning_core.pruner' has no attribute {name!r}")


def names() -> List[str]:
    """Names of every registered pruning algorithm, built-in or from plugins."""
    from .._plugins import get_hub

    return get_hub().pruners().names()


def create(name: str, model: Any, example_inputs: Any, **kwargs: Any) -> BasePruner:
    """Build the pruner registered as ``name`` (close matches are suggested on a typo)."""
    from .._plugins import get_hub

    return get_hub().pruners().get(name).factory(model, example_inputs, **kwargs)


__all__ = ["BasePruner", "MetaPruner", "BasePruningFunc", "MagnitudePruner", "RandomPruner", "BNScalePruner", "GroupNormPruner", "GrowingRegPruner",
           "PruningOptions", "PruningWarning", "linear_scheduler", "geometric_scheduler", "resolve_importance",
           "names", "create"]
