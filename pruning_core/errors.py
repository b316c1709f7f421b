"""The one exception hierarchy of pruning_core.

Every error raised on purpose by the library derives from :class:`PruningError`,
so ``except tp.PruningError`` catches all of them. Messages name the module,
argument or plugin at fault and say what to do next.
"""

from __future__ import annotations


class PruningError(Exception):
    """Base class of every error pruning_core raises on purpose."""


class ConfigurationError(PruningError, ValueError):
    """An argument has a wrong value or type (ratios, indices, names...)."""


class InvalidIndicesError(ConfigurationError):
    """Pruning indices are out of range, duplicated, or of the wrong type."""


class UnknownNameError(ConfigurationError, KeyError):
    """A name (importance criterion, pruner, model spec) is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class GraphError(PruningError):
    """The dependency graph could not be built or used."""


class TracingError(GraphError):
    """The model's forward pass failed while it was being traced."""


class UnsupportedModelError(GraphError):
    """The model is wrapped or built in a way the tracer cannot follow."""


class NoHandlerError(GraphError):
    """A module needs a layer handler and no plugin provides one."""


class EmptyLayerError(PruningError):
    """A pruning step would remove every channel of some layer."""


class PruneFailedError(PruningError):
    """A handler or hook failed while pruning; the model was restored."""


class PluginError(PruningError):
    """A plugin failed to load or returned something invalid."""


class PluginConflictError(PluginError):
    """Two plugins claim the same layer class, criterion or name."""


class SerializationError(PruningError):
    """A saved pruned model cannot be loaded: truncated, tampered or mismatched."""


class DistributedError(PruningError):
    """Ranks of a process group disagree (statistics, plans, shapes); nothing was pruned."""


class PlanMismatchError(DistributedError):
    """The ranks planned to remove different channels; the error names the first group that differs."""


__all__ = [
    "PruningError",
    "ConfigurationError",
    "InvalidIndicesError",
    "UnknownNameError",
    "GraphError",
    "TracingError",
    "UnsupportedModelError",
    "NoHandlerError",
    "EmptyLayerError",
    "PruneFailedError",
    "PluginError",
    "PluginConflictError",
    "SerializationError",
    "DistributedError",
    "PlanMismatchError",
]


class PruningWarning(UserWarning):
    """A request was adjusted (clamped to keep one channel), or part of the model could not be covered."""



def warn(message: str, category: type = PruningWarning) -> None:
    """Warn with the location of the first caller outside pruning_core (the user's line), wherever we are."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called warn()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
