"""Tracing, dimension algebra and groups. Nothing here knows a concrete layer type."""

from .depgraph import DependencyGraph
from .group import Dependency, Group, GroupItem
from .index import ChannelIndex
from .trace import OpCall
from .transaction import Transaction

__all__ = ["DependencyGraph", "Dependency", "Group", "GroupItem", "ChannelIndex", "OpCall", "Transaction"]
