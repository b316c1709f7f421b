"""Finding the slot that holds a layer's (or a parameter's) channels on a side."""

from __future__ import annotations

from typing import Any, List, Optional

import torch
from torch import nn

from ..errors import ConfigurationError, GraphError, NoHandlerError
from . import handlers as hv
from .build import TracedModel
from .slots import Slot


class SlotLookup:
    """Module or parameter -> slot, with errors that say why a layer has no channels to prune."""

    def __init__(self, traced: TracedModel) -> None:
        self.traced = traced
        self.recorder = traced.recorder

    def module_slots(self, module: nn.Module) -> "tuple[Slot, Slot]":
        """The (input, output) slots of a handled module that ran during tracing."""
        found = self.recorder.module_slots.get(id(module))
        if found is not None:
            return found
        name = self.traced.module_names.get(id(module))
        if name is None:
            raise ConfigurationError(f"{type(module).__name__} is not part of the traced model")
        if id(module) not in self.recorder.handlers and self.traced.resolver.handler_of(module) is None:
            raise self.no_handler_error(module, name)
        raise GraphError(f"{name} ({type(module).__name__}) was not called as a module during tracing (its forward "
                         "did not run, though its parameters may have been used directly), so it has no channels "
                         "of its own to prune")

    def ran_as_module(self, module: nn.Module) -> bool:
        """Whether ``module``'s forward ran during tracing (not only its parameters used by other code)."""
        return id(module) in self.recorder.module_slots

    def channel_slot(self, module: nn.Module, side: str) -> Slot:
        """The slot holding a layer's channels on ``side``: its module slot, or, when code applied its
        weight directly (``F.linear(x, qkv.weight)``), the weight's dim (0 for out, 1 for in)."""
        if not self.ran_as_module(module):
            dim = 0 if side == "out" else 1
            for slot in self.recorder.slots:
                if slot.is_param and slot.dim == dim and slot.target.owner is module and slot.target.attr == "weight":
                    return slot
        in_slot, out_slot = self.module_slots(module)
        return out_slot if side == "out" else in_slot

    def has_channels(self, module: nn.Module, side: str = "out") -> bool:
        """Whether tracing saw ``module``'s channels on ``side``: it ran, or its weight was used directly."""
        try:
            self.channel_slot(module, side)
        except (GraphError, ConfigurationError, NoHandlerError):
            return False
        return True

    def side_slot(self, target: Any, side: str) -> Slot:
        """The slot pruned when ``target`` (a module or a parameter) loses channels on ``side``."""
        if isinstance(target, torch.Tensor):
            return self.param_slot(target, 0 if side == "out" else 1)
        if not isinstance(target, nn.Module):
            raise ConfigurationError(f"expected a module or parameter, got {type(target).__name__}")
        in_slot, out_slot = self.module_slots(target)
        if side == "in" and hv.is_coupled(in_slot.handler):
            return out_slot
        return out_slot if side == "out" else in_slot

    def param_slot(self, tensor: torch.Tensor, dim: int) -> Slot:
        slots = self.recorder.param_slots.get(id(tensor))
        if not slots:
            raise ConfigurationError("this tensor is not a parameter used during tracing")
        for slot in slots:
            if slot.dim == dim:
                return slot
        raise ConfigurationError(f"parameter has no prunable dim {dim}")

    def protected_slots(self, target: Any) -> List[Slot]:
        """The slots whose channels ignoring ``target`` keeps: a layer's outputs, or a parameter's dims."""
        if isinstance(target, torch.Tensor):
            return list(self.recorder.param_slots.get(id(target), []))
        slots = self.recorder.module_slots.get(id(target))
        if slots:
            return [slots[1]]
        if isinstance(target, nn.Module) and self.has_channels(target):  # its weight was used directly
            return [self.channel_slot(target, "out")]
        return []

    def no_handler_error(self, module: nn.Module, name: Optional[str] = None) -> NoHandlerError:
        name = name or self.traced.module_names.get(id(module), type(module).__name__)
        hint = self.traced.resolver.missing_hint(module)
        return NoHandlerError(
            f"no handler for {name} ({type(module).__name__}). " +
            (hint + ". " if hint else "") +
            "Register one with a plugin (hook register_layer_handlers) or pass "
            f"customized_pruners={{{type(module).__name__}: handler}}")
