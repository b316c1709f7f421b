"""The parameter slices that belong to channels: used for scoring and soft pruning."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from . import handlers as hv
from .slots import Slot

SliceSpec = Tuple[torch.Tensor, int, Optional[Any]]


def slot_params(slot: Slot) -> List[SliceSpec]:
    """``(tensor, dim, to_channels)`` for each tensor whose ``dim`` is indexed by the slot's positions."""
    if slot.is_param:
        return [(getattr(slot.target.owner, slot.target.attr), slot.dim, None)]
    return [(t, d, f) for t, d, f in hv.channel_params(slot.handler, slot.target.owner, slot.kind)]


def channel_view(tensor: torch.Tensor, to_channels: Optional[Any]) -> torch.Tensor:
    """``tensor`` laid out so that the slice's ``dim`` lists channels."""
    return tensor if to_channels is None else to_channels(tensor)


def zero_positions(tensor: torch.Tensor, dim: int, to_channels: Optional[Any], positions: torch.Tensor) -> None:
    """Set the slices at ``positions`` to zero in place (soft pruning)."""
    if tensor.device.type == "meta" or positions.numel() == 0:
        return
    with torch.no_grad():
        if to_channels is None:
            tensor.index_fill_(dim, positions.to(tensor.device), 0)
            return
        flat = torch.arange(tensor.numel(), device=tensor.device).reshape(tensor.shape)
        chosen = to_channels(flat).index_select(dim, positions.to(tensor.device)).reshape(-1)
        tensor.view(-1)[chosen] = 0
