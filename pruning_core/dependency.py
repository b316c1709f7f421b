"""Torch-Pruning's ``tp.dependency`` module: the dependency graph and its groups under their old home.

Code written for Torch-Pruning imports ``from torch_pruning.dependency import DependencyGraph``;
these are the same classes as ``tp.DependencyGraph``, ``tp.Group`` and ``tp.Dependency``.
"""

from __future__ import annotations

from .graph.depgraph import DependencyGraph
from .graph.group import Dependency, Group, GroupItem

__all__ = ["DependencyGraph", "Dependency", "Group", "GroupItem"]
