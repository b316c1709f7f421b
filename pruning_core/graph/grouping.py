"""Enumerating groups of coupled channels, protecting ignored layers, and freezing groups that break the model."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set

import torch
from torch import nn

from ..errors import ConfigurationError
from . import handlers as hv
from .build import TracedModel
from .dims import FROZEN, OUTPUT, Atom, leaves
from .group import Group
from .index import ChannelIndex
from .lookup import SlotLookup
from .removal import ChannelRemover


class DefaultRoots:
    """The default ``root_module_types``: layers whose handler sets ``default_root = True``.

    The built-in convolution, linear and recurrent handlers do, matching Torch-Pruning's
    default of convolutions and linear layers; a plugin's handler can opt in too.
    """

    def __repr__(self) -> str:
        return "DEFAULT_ROOTS"


DEFAULT_ROOTS = DefaultRoots()


class GroupFinder:
    """``get_all_groups`` and the trial check behind it."""

    def __init__(self, traced: TracedModel, index: Callable[[], ChannelIndex], slots: SlotLookup,
                 make_group: Callable[..., Group], remover: ChannelRemover, validate: bool) -> None:
        self.traced = traced
        self._index = index
        self.slots = slots
        self._make_group = make_group
        self.remover = remover
        self.validate_by_default = validate
        self._runner: Optional[Any] = None
        self.checked: Set[Atom] = set()

    def trials(self) -> Optional[Any]:
        """The trial runner (built on first use), or None when validation is off or no copy can run."""
        if not self.validate_by_default:
            return None
        if self._runner is None:
            from .validate import TrialRunner

            self._runner = TrialRunner(self.traced, self.remover)
        return self._runner if self._runner.available else None

    def check(self, group: Group) -> bool:
        """False when the group would empty a layer, or when removing it breaks a trial forward pass."""
        index = self._index()
        for serial, positions in group.positions().items():
            if positions.numel() >= index.size(index.slot(serial)):
                return False
        trials = self.trials()
        if trials is not None and group.selections:
            # Removing channels of a model output changes that output's shape, by request.
            reshapes_output = any(atom.flags & OUTPUT for atom in group.atoms)
            ok, reason = trials.passes(group.selections, outputs_may_change=reshapes_output)
            group.check_failure = None if ok else reason
            return ok
        return True

    def all_groups(self, ignored_layers: Sequence[Any], root_module_types: Any, validate: bool) -> Iterator[Group]:
        recorder = self.traced.recorder
        protected = self.protected_atoms(ignored_layers)
        if validate:
            self.validate(protected)
        index = self._index()
        seen: Set[Atom] = set()
        for module in self.traced.model.modules():
            slots = recorder.module_slots.get(id(module))
            if slots is None or not self._is_root(module, slots[1].handler, root_module_types):
                continue
            for atom in index.prunable_atoms(slots[1], protected):
                if atom not in seen:
                    seen.add(atom)
                    yield self._make_group([(atom, torch.arange(atom.current_size))], slots[1])
        if root_module_types is not None:
            return
        # Channels only a directly used weight produces (F.linear(x, qkv.weight)) are rooted at that weight;
        # in a stack of expert weights (a frozen leading experts dimension) every dimension may hold them.
        for param_slots in recorder.param_slots.values():
            stacked = _expert_stack(param_slots)
            for slot in param_slots:
                if slot.kind != "param" or (slot.dim != 0 and not stacked):
                    continue
                for atom in index.prunable_atoms(slot, protected):
                    if atom not in seen:
                        seen.add(atom)
                        yield self._make_group([(atom, torch.arange(atom.current_size))], slot)

    @staticmethod
    def _is_root(module: nn.Module, handler: Any, root_module_types: Any) -> bool:
        if root_module_types is None:  # every layer with channels of its own (not BatchNorm-like)
            return not hv.is_coupled(handler)
        if isinstance(root_module_types, DefaultRoots):
            return bool(getattr(handler, "default_root", False))
        return isinstance(module, tuple(root_module_types))

    def validate(self, protected: Set[Atom] = frozenset()) -> Dict[Atom, str]:
        """Freeze every candidate group whose removal breaks a trial forward pass; return them with reasons."""
        index = self._index()
        candidates = [atom for atom in index.atoms()
                      if atom not in self.checked and atom not in protected and atom.prunable
                      and atom.current_size > 1 and index.has_weights(atom)]
        if not candidates:
            return {}
        trials = self.trials()
        if trials is None:
            self.checked.update(candidates)
            return {}
        candidates.sort(key=lambda a: a.serial)
        failing = trials.failing(candidates)
        for atom, reason in failing.items():
            self.traced.recorder.space.freeze(atom, f"trial pruning failed: {reason}")
        self.checked.update(candidates)
        return failing

    def protected_atoms(self, ignored: Sequence[Any]) -> Set[Atom]:
        """Atoms that ignoring these modules or parameters protects."""
        index = self._index()
        protected: Set[Atom] = set()
        for target in expand_ignored(ignored, self.traced.model):
            for slot in self.slots.protected_slots(target):
                protected.update(index.atoms_of(slot))
        return protected


def expand_ignored(ignored: Sequence[Any], model: Optional[nn.Module]) -> List[Any]:
    """Ignored modules include their submodules; parameters stay as given. Raises on foreign objects."""
    out: List[Any] = []
    names = {id(m) for m in model.modules()} if model is not None else set()
    params = {id(p) for p in model.parameters()} if model is not None else set()
    for item in ignored or ():
        if isinstance(item, nn.Parameter) or (isinstance(item, torch.Tensor) and not isinstance(item, nn.Module)):
            if model is not None and id(item) not in params:
                raise ConfigurationError("an ignored parameter is not part of the model")
            out.append(item)
        elif isinstance(item, nn.Module):
            if model is not None and id(item) not in names:
                raise ConfigurationError(f"ignored layer {type(item).__name__} is not part of the model; "
                                         "pass modules taken from the model being pruned")
            out.extend(item.modules())
        else:
            raise ConfigurationError(f"ignored_layers must hold modules or parameters, got {type(item).__name__}")
    return out


def _expert_stack(param_slots: Sequence[Any]) -> bool:
    """A 3-D weight whose leading dimension (experts, more than one) is frozen: ``(experts, out, in)``."""
    if len(param_slots) != 3:
        return False
    first = next((slot for slot in param_slots if slot.dim == 0), None)
    atoms = leaves(first.expr) if first is not None else []
    return bool(atoms) and all(atom.flags & FROZEN for atom in atoms)
