"""Where streamed calibration keeps things: hidden states within a memory budget, sizes, peak memory."""

from __future__ import annotations

import os
import resource
from typing import Dict, Union

import torch

from ..errors import ConfigurationError


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_bytes(value: Union[int, str]) -> int:
    """``4GB``, ``512MB``, ``1.5GiB`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    units = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
             "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}
    text = str(value).strip().upper().replace(" ", "")
    number = text.rstrip("KMGTIB")
    unit = text[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or amount <= 0:
        raise ConfigurationError(f"max_memory={value!r}: give a size such as '4GB', '512MB' or a number of bytes")
    return int(amount * units[unit])


class HiddenCache:
    """Each calibration batch's hidden state between two blocks; on disk once ``budget`` bytes are held."""

    def __init__(self, budget: int, directory: str) -> None:
        self.budget = budget
        self.directory = directory
        self._items: Dict[int, Union[torch.Tensor, str]] = {}
        self.held = 0
        self.spilled = 0

    def put(self, index: int, tensor: torch.Tensor) -> None:
        self.drop(index)
        size = tensor.numel() * tensor.element_size()
        if self.held + size <= self.budget:
            self._items[index] = tensor
            self.held += size
            return
        from safetensors.torch import save_file

        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"hidden-{index}.safetensors")
        save_file({"hidden": tensor.contiguous()}, path)
        self._items[index] = path
        self.spilled += 1

    def get(self, index: int) -> torch.Tensor:
        item = self._items[index]
        if isinstance(item, torch.Tensor):
            return item
        from safetensors.torch import load_file

        return load_file(item)["hidden"]

    def drop(self, index: int) -> None:
        item = self._items.pop(index, None)
        if isinstance(item, torch.Tensor):
            self.held -= item.numel() * item.element_size()
        elif isinstance(item, str) and os.path.exists(item):
            os.remove(item)

    def clear(self) -> None:
        for index in list(self._items):
            self.drop(index)


__all__ = ["HiddenCache", "parse_bytes", "peak_rss"]
