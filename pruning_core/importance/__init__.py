"""Importance criteria: ``imp(group)`` scores each channel of a group; pruners remove the lowest.

Every criterion is registered by name through the ``register_importance_criteria``
hook (``tp.importance.create("l2")``), and third-party plugins add theirs the same way.
"""

from __future__ import annotations

from typing import Any, List

from .activation import ActivationImportance
from .calibrated import CalibratedImportance, FLAPImportance, OBSImportance, WandaImportance
from .base import GroupView, Importance, lamp_transform, normalize, reduce_scores
from .gradient import GroupHessianImportance, GroupTaylorImportance
from .magnitude import (BNScaleImportance, FPGMImportance, GroupMagnitudeImportance, LAMPImportance,
                        MagnitudeImportance)
from .parity import OBDCImportance
from .random import RandomImportance

TaylorImportance = GroupTaylorImportance
HessianImportance = GroupHessianImportance


def names() -> List[str]:
    """Names of every registered criterion, built-in or from plugins."""
    from .._plugins import get_hub

    return get_hub().importance_criteria().names()


def create(name: str, **kwargs: Any) -> Any:
    """Build the criterion registered as ``name`` (close matches are suggested on a typo)."""
    from .._plugins import get_hub

    return get_hub().importance_criteria().get(name).factory(**kwargs)


__all__ = [
    "Importance", "GroupView", "GroupMagnitudeImportance", "MagnitudeImportance", "GroupTaylorImportance",
    "TaylorImportance", "GroupHessianImportance", "HessianImportance", "RandomImportance", "BNScaleImportance",
    "LAMPImportance", "FPGMImportance", "ActivationImportance", "OBDCImportance", "CalibratedImportance",
    "WandaImportance", "FLAPImportance", "OBSImportance", "normalize", "reduce_scores", "lamp_transform",
    "names", "create",
]
