"""Find which parameter slices a channel owns by watching a handler prune a copy.

Handlers written against the four-method contract need not describe their
parameters: we fill a copy of the layer with coordinates (each entry holds its
own flat index), remove channel ``k`` with the handler, and read off which
entries disappeared. Two probes give the stride pattern; a third checks it. So a
custom layer is scored exactly like a built-in one.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

MAX_PROBE_ELEMENTS = 50_000_000
_CACHE: Dict[Tuple, List[Tuple[str, int, Optional[Tuple[int, bool]]]]] = {}


class _Regroup:
    """Lays dim ``dim`` (``blocks * n`` entries) out as ``(n, blocks)``: dim ``dim`` then lists channels."""

    def __init__(self, dim: int, blocks: int, stacked: bool) -> None:
        self.dim, self.blocks, self.stacked = dim, blocks, stacked

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        d, m = self.dim, self.blocks
        n = tensor.shape[d] // m
        head, tail = tuple(tensor.shape[:d]), tuple(tensor.shape[d + 1:])
        if self.stacked:  # channel k owns entries j*n + k
            return tensor.reshape(head + (m, n) + tail).transpose(d, d + 1)
        return tensor.reshape(head + (n, m) + tail)  # channel k owns entries k*m + j


def _coordinate_copy(layer: nn.Module) -> Optional[nn.Module]:
    total = sum(p.numel() for p in layer.parameters())
    if total > MAX_PROBE_ELEMENTS:
        return None
    probe = copy.deepcopy(layer).to("cpu") if next(layer.parameters()).device.type != "meta" else copy.deepcopy(layer)
    for module in probe.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                coords = torch.arange(param.numel(), dtype=torch.float64).reshape(param.shape)
                module._parameters[name] = nn.Parameter(coords, requires_grad=False)
    return probe


def _removed(before: torch.Tensor, after: torch.Tensor) -> List[Tuple[int, torch.Tensor]]:
    """For each dim that shrank: the original coordinates removed along it."""
    if before.shape == after.shape or after.ndim != before.ndim:
        return []
    surviving = torch.unravel_index(after.reshape(-1).long(), before.shape)
    out = []
    for d in range(before.ndim):
        if before.shape[d] != after.shape[d]:
            kept = torch.unique(surviving[d])
            mask = torch.ones(before.shape[d], dtype=torch.bool)
            mask[kept] = False
            out.append((d, torch.nonzero(mask).reshape(-1)))
    return out


def _pattern(removed: List[torch.Tensor], ks: List[int], n: int) -> Optional[Tuple[int, bool]]:
    """(blocks, stacked) such that channel k owns ``k + j*n`` (stacked) or ``k*m + j`` (interleaved)."""
    m = removed[0].numel()
    for stacked in (True, False):
        ok = True
        for k, got in zip(ks, removed):
            expect = torch.arange(m) * n + k if stacked else torch.arange(m) + k * m
            if got.numel() != m or not torch.equal(torch.sort(got).values, expect):
                ok = False
                break
        if ok:
            return m, stacked
    return None


def probe_channel_params(handler: Any, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
    """``channel_params`` inferred from the handler's own pruning of a coordinate-filled copy."""
    n = int(handler.get_out_channels(layer) if side == "out" else handler.get_in_channels(layer))
    named = dict(layer.named_parameters())
    key = (type(handler), type(layer), side, tuple((k, tuple(v.shape)) for k, v in named.items()))
    if key not in _CACHE:
        _CACHE[key] = _probe(handler, layer, side, n)
    out: List[Tuple[torch.Tensor, int, Any]] = []
    for name, dim, pattern in _CACHE[key]:
        tensor = named[name]
        if pattern is None or pattern[0] == 1:
            out.append((tensor, dim, None))
        else:
            out.append((tensor, dim, _Regroup(dim, pattern[0], pattern[1])))
    return out


def _probe(handler: Any, layer: nn.Module, side: str, n: int) -> List[Tuple[str, int, Optional[Tuple[int, bool]]]]:
    if n < 2:
        return []
    probe = _coordinate_copy(layer)
    if probe is None:
        return []
    before = dict(probe.named_parameters())
    ks = sorted({0, 1, n - 1})
    removed: Dict[Tuple[str, int], List[torch.Tensor]] = {}
    prune = handler.prune_out_channels if side == "out" else handler.prune_in_channels
    for k in ks:
        trial = copy.deepcopy(probe)
        try:
            prune(trial, [k])
        except Exception:
            return []
        after = dict(trial.named_parameters())
        for name, tensor in before.items():
            if name in after:
                for dim, coords in _removed(tensor.detach(), after[name].detach()):
                    removed.setdefault((name, dim), []).append(coords)
    result = []
    for (name, dim), entries in removed.items():
        if len(entries) != len(ks):
            continue
        pattern = _pattern(entries, ks, n)
        if pattern is not None:
            result.append((name, dim, pattern))
    return result
