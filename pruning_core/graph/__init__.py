"""Tracing, dimension algebra and groups. Nothing here knows a concrete layer type."""

from .depgraph import DependencyGraph
from .group import Dependency, Group, GroupItem
from .trace import OpCall

__all__ = ["DependencyGraph", "Dependency", "Group", "GroupItem", "OpCall"]
