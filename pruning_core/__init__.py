"""pruning_core: structural pruning of PyTorch models with dependency graphs and plugins.

The public API follows Torch-Pruning's, so ``import pruning_core as tp`` runs
code written for it: ``tp.DependencyGraph``, ``tp.pruner``, ``tp.importance``,
``tp.utils`` and the low-level ``tp.prune_*`` functions. Importing this package
loads no plugin and no model framework; plugins load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (ConfigurationError, DistributedError, EmptyLayerError, GraphError, InvalidIndicesError,
                     NoHandlerError, PlanMismatchError, PluginConflictError, PluginError, PruneFailedError,
                     PruningError, SerializationError, TracingError, UnknownNameError, UnsupportedModelError)
from .functional import *  # noqa: F401,F403 - the 22+ seed functions, listed in functional.__all__
from .functional import __all__ as _functional_names
from .graph import Dependency, DependencyGraph, Group, GroupItem
from .hookspecs import hookimpl, hookspec
from .layer_handler import BasePruningFunc, CoupledPruningFunc
from .records import (AttentionLayout, ImportanceSpec, LayerHandlerSpec, ModelScheme, ModelSource, OpRuleSpec,
                      PrunerSpec, StateCodec, StructureHint)

_LAZY_SUBMODULES = ("importance", "pruner", "utils", "serialization", "testing", "function", "distributed")


def __getattr__(name: str) -> Any:
    # Submodules with heavier imports load on first attribute access.
    if name in _LAZY_SUBMODULES:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in ("state_dict", "load_state_dict", "save_pruned", "load_pruned"):
        return getattr(import_module(".serialization", __name__), name)
    raise AttributeError(f"module 'pruning_core' has no attribute {name!r}")


__all__ = [
    "__version__", "DependencyGraph", "Group", "GroupItem", "Dependency", "BasePruningFunc", "CoupledPruningFunc",
    "LayerHandlerSpec", "OpRuleSpec", "ImportanceSpec", "PrunerSpec", "StructureHint", "AttentionLayout", "ModelScheme", "ModelSource",
    "StateCodec",
    "hookimpl", "hookspec", "state_dict", "load_state_dict", "save_pruned", "load_pruned",
    "PruningError", "ConfigurationError", "InvalidIndicesError", "UnknownNameError", "GraphError", "TracingError",
    "UnsupportedModelError", "NoHandlerError", "EmptyLayerError", "PruneFailedError", "PluginError",
    "PluginConflictError", "SerializationError", "DistributedError", "PlanMismatchError", *_functional_names, *_LAZY_SUBMODULES,
]
