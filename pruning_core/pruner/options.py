"""The pruner's options: seed-compatible keywords checked once, in one place."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from torch import nn

from ..errors import ConfigurationError
from .scheduler import linear_scheduler

# Older Torch-Pruning spellings still found in user code.
LEGACY_NAMES = {
    "ch_sparsity": "pruning_ratio",
    "ch_sparsity_dict": "pruning_ratio_dict",
    "max_ch_sparsity": "max_pruning_ratio",
    "iterative_sparsity_scheduler": "iterative_pruning_ratio_scheduler",
    "channel_groups": "out_channel_groups",
}


def _ratio(name: str, value: Any, allow_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number in [0, 1), got {value!r}")
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok):
        raise ConfigurationError(f"{name} must be in [0, {'1]' if allow_one else '1)'}, got {value}; "
                                 "it is the fraction of channels to remove")
    return float(value)


@dataclasses.dataclass
class PruningOptions:
    """Every option of :class:`~pruning_core.pruner.BasePruner`, validated."""

    global_pruning: bool = False
    pruning_ratio: float = 0.5
    pruning_ratio_dict: Dict[Any, float] = dataclasses.field(default_factory=dict)
    max_pruning_ratio: float = 1.0
    iterative_steps: int = 1
    iterative_pruning_ratio_scheduler: Callable[[float, int], List[float]] = linear_scheduler
    ignored_layers: List[Any] = dataclasses.field(default_factory=list)
    round_to: Optional[int] = None
    isomorphic: bool = False
    in_channel_groups: Dict[nn.Module, int] = dataclasses.field(default_factory=dict)
    out_channel_groups: Dict[nn.Module, int] = dataclasses.field(default_factory=dict)
    num_heads: Dict[nn.Module, int] = dataclasses.field(default_factory=dict)
    prune_num_heads: bool = False
    prune_head_dims: bool = True
    head_pruning_ratio: float = 0.0
    head_pruning_ratio_dict: Dict[Any, float] = dataclasses.field(default_factory=dict)
    customized_pruners: Dict[Type, Any] = dataclasses.field(default_factory=dict)
    unwrapped_parameters: List[Any] = dataclasses.field(default_factory=list)
    root_module_types: Optional[Tuple[type, ...]] = None  # None: every layer with a handler
    forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None
    output_transform: Optional[Callable[[Any], Any]] = None
    validate: bool = True
    # Calibration (pruning_core/calibration): data-aware criteria and compensation.
    calibration: Any = None  # an iterable of batches in the form of example_inputs
    compensation: Optional[str] = None  # None, "bias" or "lstsq"
    sequential: Optional[bool] = None  # None: on where a plugin names the model's stack of blocks
    damping: Optional[float] = None  # lstsq/obs ridge, as a fraction of the mean Gram diagonal (default 0.01)
    distributed: Optional[bool] = None  # None: reduce and check across ranks when torch.distributed is initialized
    process_group: Any = None  # the torch.distributed group to reduce over (None: the default group)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "PruningOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        values: Dict[str, Any] = {}
        for key, value in kwargs.items():
            name = LEGACY_NAMES.get(key, key)
            if name not in fields:
                close = difflib.get_close_matches(key, sorted(fields), n=2)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ConfigurationError(f"unknown pruner argument {key!r}{hint}")
            if value is not None:
                values[name] = value
        options = cls(**values)
        options._check()
        return options

    def _check(self) -> None:
        _ratio("pruning_ratio", self.pruning_ratio)
        _ratio("max_pruning_ratio", self.max_pruning_ratio, allow_one=True)
        _ratio("head_pruning_ratio", self.head_pruning_ratio)
        for name in ("pruning_ratio_dict", "head_pruning_ratio_dict"):
            table = getattr(self, name)
            if not isinstance(table, dict):
                raise ConfigurationError(f"{name} must be a dict of module (or tuple of modules) -> ratio")
            for key, value in table.items():
                _ratio(f"{name}[{_key_name(key)}]", value)
                modules = key if isinstance(key, tuple) else (key,)
                if not all(isinstance(m, nn.Module) for m in modules):
                    raise ConfigurationError(f"{name} keys must be modules or tuples of modules, got {key!r}")
        if isinstance(self.iterative_steps, bool) or not isinstance(self.iterative_steps, int) \
                or self.iterative_steps < 1:
            raise ConfigurationError(f"iterative_steps must be a positive int, got {self.iterative_steps!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigurationError(f"round_to must be a positive int, got {self.round_to!r}")
        for name in ("in_channel_groups", "out_channel_groups", "num_heads"):
            for module, value in getattr(self, name).items():
                if not isinstance(module, nn.Module) or not isinstance(value, int) or value < 1:
                    raise ConfigurationError(f"{name} must map modules to positive ints, got {module!r}: {value!r}")
        if self.distributed is not None and not isinstance(self.distributed, bool):
            raise ConfigurationError(f"distributed must be None, True or False, got {self.distributed!r}")
        if not callable(self.iterative_pruning_ratio_scheduler):
            raise ConfigurationError("iterative_pruning_ratio_scheduler must be callable(ratio, steps) -> list")
        if self.root_module_types is not None:
            self.root_module_types = tuple(self.root_module_types)
        self._check_calibration()
        schedule = self.iterative_pruning_ratio_scheduler(self.pruning_ratio, self.iterative_steps)
        if len(schedule) != self.iterative_steps + 1:
            raise ConfigurationError(
                f"the scheduler returned {len(schedule)} ratios for {self.iterative_steps} steps; "
                f"it must return iterative_steps + 1 values starting at 0")


    def _check_calibration(self) -> None:
        from ..compensation import check_method

        check_method(self.compensation)
        if self.sequential is not None and not isinstance(self.sequential, bool):
            raise ConfigurationError(f"sequential must be True, False or None, got {self.sequential!r}")
        if self.damping is not None and (isinstance(self.damping, bool) or not isinstance(self.damping, (int, float))
                                         or not 0 <= self.damping < float("inf")):
            raise ConfigurationError(f"damping must be a number >= 0 (a fraction of the mean Gram diagonal), "
                                     f"got {self.damping!r}")
        if self.calibration is not None:
            from ..calibration.batches import reiterable

            self.calibration = reiterable(self.calibration)


def _key_name(key: Any) -> str:
    if isinstance(key, tuple):
        return "(" + ", ".join(type(m).__name__ for m in key) + ")"
    return type(key).__name__


def schedule(options: PruningOptions, ratio: float) -> List[float]:
    """Target ratios after each step for one scope, ending exactly at ``ratio``."""
    values = list(options.iterative_pruning_ratio_scheduler(ratio, options.iterative_steps))
    values[-1] = ratio
    return values


__all__ = ["PruningOptions", "LEGACY_NAMES", "schedule"]
