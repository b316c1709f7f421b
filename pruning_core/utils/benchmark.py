"""Latency, throughput and memory of a model, with Torch-Pruning's signatures.

``measure_latency(model, example_inputs, repeat, warmup, run_fn)`` and its siblings take the
same arguments as in Torch-Pruning (``run_fn=`` or this project's ``forward_fn=``, ``device=``
for memory). The defaults are smaller than Torch-Pruning's 300 repeats, which would take
minutes on a CPU. To compare an original and a pruned model, use
:func:`pruning_core.utils.latency.compare_latency`: timing them one after the other on a busy
machine compares two moments, not two models.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigurationError
from ..calling import ForwardFn
from ..calling import call_model as _call
from .progress import progress



def _runner(forward_fn: ForwardFn, run_fn: ForwardFn) -> ForwardFn:
    if forward_fn is not None and run_fn is not None and forward_fn is not run_fn:
        raise ConfigurationError("pass run_fn (Torch-Pruning's name) or forward_fn, not both")
    return forward_fn if forward_fn is not None else run_fn


def _synchronize(model: nn.Module) -> None:
    device = next((p.device for p in model.parameters()), None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(model: nn.Module, example_inputs: Any, repeat: int = 20, warmup: int = 3,
                    forward_fn: ForwardFn = None, label: str = "latency",
                    run_fn: ForwardFn = None) -> Tuple[float, float]:
    """Mean and standard deviation of one forward pass, in milliseconds (wall time).

    :param repeat: timed calls (Torch-Pruning's default is 300; 20 here).
    :param warmup: untimed calls first (Torch-Pruning: 50; 3 here).
    :param run_fn: ``run_fn(model, example_inputs)`` instead of ``model(example_inputs)``
        (``forward_fn`` is the same thing).
    """
    if repeat < 1 or warmup < 0:
        raise ConfigurationError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    call = _runner(forward_fn, run_fn)
    for _ in range(warmup):
        _call(model, example_inputs, call)
    times = []
    for _ in progress(range(repeat), label):
        start = time.perf_counter()
        _call(model, example_inputs, call)
        _synchronize(model)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.mean(times), (statistics.stdev(times) if len(times) > 1 else 0.0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def measure_memory(model: nn.Module, example_inputs: Any, device: Union[str, torch.device, None] = None,
                   run_fn: ForwardFn = None, forward_fn: ForwardFn = None) -> int:
    """Bytes used by one forward pass.

    On a CUDA ``device`` (or a model on one): the peak allocated memory, as Torch-Pruning
    reports it. On the CPU: bytes of parameters and buffers plus the resident-memory growth
    of the pass.
    """
    call = _runner(forward_fn, run_fn)
    on_cuda = (torch.device(device).type == "cuda") if device is not None else \
        any(p.device.type == "cuda" for p in model.parameters())
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        _call(model, example_inputs, call)
        return int(torch.cuda.max_memory_allocated(device))
    gc.collect()
    tensors = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    before = _rss_bytes()
    _call(model, example_inputs, call)
    return tensors + max(0, _rss_bytes() - before)


def measure_fps(model: nn.Module, example_inputs: Any, repeat: int = 20, warmup: int = 3,
                run_fn: ForwardFn = None, forward_fn: ForwardFn = None) -> float:
    """Forward passes per second."""
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup,
                                 forward_fn=_runner(forward_fn, run_fn))
    return 1000.0 / mean_ms


def _batch_size(inputs: Any) -> int:
    from .tools import flatten_as_list

    first = next((t for t in flatten_as_list(inputs) if isinstance(t, torch.Tensor)), None)
    if first is None or first.ndim == 0:
        raise ConfigurationError("measure_throughput needs a tensor among the example inputs to read the batch "
                                 "size from")
    return int(first.shape[0])


def measure_throughput(model: nn.Module, example_inputs: Any, repeat: int = 20, warmup: int = 3,
                       run_fn: ForwardFn = None, forward_fn: ForwardFn = None) -> float:
    """Samples per second: the batch size (first dim of the first input tensor) times forward passes per second."""
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup,
                                 forward_fn=_runner(forward_fn, run_fn))
    return _batch_size(example_inputs) * 1000.0 / mean_ms


__all__ = ["measure_latency", "measure_memory", "measure_fps", "measure_throughput"]
