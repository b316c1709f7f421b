"""Running calibration batches through a model: batch forms, devices, eval mode and progress."""

from __future__ import annotations

import collections.abc
import contextlib
from typing import Any, Callable, Iterable, Iterator, List, Optional

import torch
from torch import nn

from ..calling import call_model
from ..errors import ConfigurationError
from ..utils.progress import progress

Forward = Callable[[nn.Module, Any], Any]


def reiterable(calibration: Any) -> Iterable[Any]:
    """Calibration batches that can be iterated once per pass.

    Lists, tuples of batches and DataLoaders are used as they are; a one-shot
    iterator or generator is read into a list once.
    """
    if isinstance(calibration, (torch.Tensor, collections.abc.Mapping, str, bytes)) or not isinstance(calibration,
                                                                                   collections.abc.Iterable):
        raise ConfigurationError(
            f"calibration must be an iterable of batches (a list, a DataLoader...), each in the form of "
            f"example_inputs; got {type(calibration).__name__}. For one batch, pass [batch]")
    if isinstance(calibration, collections.abc.Iterator):  # a generator: keep its batches for every pass
        return list(calibration)
    return calibration


def count(batches: Iterable[Any]) -> Optional[int]:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def make_forward(forward_fn: Optional[Forward], example_inputs: Any) -> Forward:
    """Call the model on one batch the way the pruner calls it on ``example_inputs``."""
    def forward(model: nn.Module, batch: Any) -> Any:
        batch = _like_example(batch, example_inputs)
        batch = _to_device(batch, _device_of(model))
        return call_model(model, batch, forward_fn)
    return forward


def _like_example(batch: Any, example: Any) -> Any:
    """A DataLoader's ``(inputs, labels)`` batch for a model whose example input is one tensor: the inputs."""
    if isinstance(example, torch.Tensor) and isinstance(batch, (list, tuple)) and len(batch) >= 2 \
            and isinstance(batch[0], torch.Tensor) and batch[0].dim() == example.dim() \
            and tuple(batch[0].shape[1:]) == tuple(example.shape[1:]):
        return batch[0]
    return batch


def _device_of(model: nn.Module) -> Optional[torch.device]:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _to_device(batch: Any, device: Optional[torch.device]) -> Any:
    if device is None or device.type == "meta":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device) if batch.device != device else batch
    if isinstance(batch, collections.abc.Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if type(batch) in (list, tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a calibration pass; each module's mode is put back afterwards."""
    modes: List[Any] = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (sequential calibration stops after one block)."""


def run(model: nn.Module, batches: Iterable[Any], forward: Forward, label: str) -> int:
    """Run every batch through the model (eval mode, no grad); returns how many ran."""
    done = 0
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ConfigurationError("calibration needs the model's real weights, but they are on the meta device; "
                                 "load the weights first, or prune without calibration")
    with evaluating(model):
        for batch in progress(batches, label, count(batches)):
            try:
                forward(model, batch)
            except StopForward:
                pass
            done += 1
    if done == 0:
        raise ConfigurationError("calibration is empty: pass at least one batch")
    return done


__all__ = ["reiterable", "make_forward", "run", "evaluating", "StopForward", "count"]
