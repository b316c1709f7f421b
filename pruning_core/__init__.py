"""pruning_core: structural pruning of PyTorch models with dependency graphs and plugins.

The public API follows Torch-Pruning's, so ``import pruning_core as tp`` runs
code written for it: ``tp.DependencyGraph``, ``tp.pruner``, ``tp.importance``,
``tp.utils`` and the low-level ``tp.prune_*`` functions. Importing this package
loads no plugin and no model framework; plugins load on first use.

Only the version and the exception classes are imported eagerly. Every other
public name (the graph, the records, the ``prune_*`` functions, the hook markers)
and every submodule is imported on first attribute access, through the module's
``__getattr__``; the object returned is the one defined in its home module, so
``isinstance`` checks, identity comparisons and pickling behave as with eager
imports. ``from pruning_core import *`` imports everything in ``__all__``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Dict, List

from ._version import __version__
from .errors import (ConfigurationError, DistributedError, EmptyLayerError, GraphError, InvalidIndicesError,
                     NoHandlerError, PlanMismatchError, PluginConflictError, PluginError, PruneFailedError,
                     PruningError, SerializationError, TracingError, UnknownNameError, UnsupportedModelError)

# The layer kinds of the low-level functions: ``prune_<kind>_out_channels`` and ``prune_<kind>_in_channels``
# live in ``functional`` (a test checks that this list and ``functional.__all__`` agree).
_FUNCTIONAL_KINDS = ("batchnorm", "conv", "depthwise_conv", "embedding", "groupnorm", "instancenorm", "layernorm",
                     "linear", "lstm", "multihead_attention", "parameter", "prelu", "rmsnorm")
_functional_names = sorted(f"prune_{kind}_{side}_channels" for kind in _FUNCTIONAL_KINDS for side in ("in", "out"))

# Public name -> the submodule (relative to this package) that defines it.
_LAZY_NAMES: Dict[str, str] = {
    "Dependency": ".graph.group", "DependencyGraph": ".graph.depgraph", "Group": ".graph.group",
    "GroupItem": ".graph.group",
    "hookimpl": ".hookspecs", "hookspec": ".hookspecs",
    "BasePruningFunc": ".layer_handler", "CoupledPruningFunc": ".layer_handler",
    **{name: ".records" for name in ("AttentionLayout", "ImportanceSpec", "LayerHandlerSpec", "ModelScheme",
                                     "ModelSource", "OpRuleSpec", "PrunerSpec", "SizeAttribute", "StateCodec",
                                     "StructureHint")},
    **{name: ".serialization" for name in ("state_dict", "load_state_dict", "save_pruned", "load_pruned")},
    **{name: ".functional" for name in _functional_names},
    # Torch-Pruning also exports its pruners at the top level.
    **{name: ".pruner" for name in ("BasePruner", "MetaPruner", "MagnitudePruner", "GroupNormPruner",
                                    "BNScalePruner", "GrowingRegPruner")},
}

# Submodules advertised in ``__all__`` (Torch-Pruning's ``tp.pruner``, ``tp.importance``, ...).
_LAZY_SUBMODULES = ("importance", "pruner", "utils", "serialization", "testing", "function", "distributed",
                    "dependency", "ops")
# Every submodule, reachable as an attribute of the package once it is imported (a test checks the list).
_SUBMODULES = frozenset(_LAZY_SUBMODULES + (
    "builtin", "calibration", "calling", "cli", "compensation", "errors", "functional", "graph", "hookspecs", "layer_handler",
    "lineage", "records", "_gc", "_hint_memo", "_hooktrace", "_plugins", "_registry", "_version"))


def __getattr__(name: str) -> Any:
    # Called only for names not yet in the module's namespace: import the home module, cache the value.
    home = _LAZY_NAMES.get(name)
    if home is not None:
        value = getattr(import_module(home, __name__), name)
    elif name in _SUBMODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'pruning_core' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | _SUBMODULES)


__all__ = [
    "__version__", "DependencyGraph", "Group", "GroupItem", "Dependency", "BasePruningFunc", "CoupledPruningFunc",
    "LayerHandlerSpec", "OpRuleSpec", "ImportanceSpec", "PrunerSpec", "StructureHint", "AttentionLayout", "ModelScheme", "ModelSource",
    "StateCodec", "SizeAttribute",
    "BasePruner", "MetaPruner", "MagnitudePruner", "GroupNormPruner", "BNScalePruner", "GrowingRegPruner",
    "hookimpl", "hookspec", "state_dict", "load_state_dict", "save_pruned", "load_pruned",
    "PruningError", "ConfigurationError", "InvalidIndicesError", "UnknownNameError", "GraphError", "TracingError",
    "UnsupportedModelError", "NoHandlerError", "EmptyLayerError", "PruneFailedError", "PluginError",
    "PluginConflictError", "SerializationError", "DistributedError", "PlanMismatchError", *_functional_names, *_LAZY_SUBMODULES,
]
