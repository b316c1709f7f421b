"""Helpers of ``tp.state_dict`` and ``tp.save_pruned`` that need no numpy.

Which of the user's own attributes to keep, tensor bytes for checksums, and a writer of the
safetensors format (``safetensors.torch.save_file`` goes through numpy, which a core install
of torch + pluggy + safetensors does not have).
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigurationError
from ..graph.record import is_plain, plain_attrs


def is_plain_tree(value: Any) -> bool:
    """Plain data, also inside dicts with string keys."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_tree(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(is_plain_tree(v) for v in value)
    return is_plain(value)


def attribute_selector(attributes: Union[None, str, Sequence[str]]) -> Optional[Any]:
    """``keep(name, module) -> {attr: value}`` for the requested plain attributes, or None."""
    if attributes is None:
        return None
    if attributes == "all":
        def keep_all(name: str, module: nn.Module) -> Dict[str, Any]:
            return {k: v for k, v in plain_attrs(module).items() if k != "training"}

        return keep_all
    if isinstance(attributes, str) or not all(isinstance(a, str) for a in attributes):
        raise ConfigurationError(f'attributes must be None, "all" or a list of attribute names, got {attributes!r}')
    wanted = list(attributes)

    def keep_named(name: str, module: nn.Module) -> Dict[str, Any]:
        picked = {}
        for attr in wanted:
            if attr not in module.__dict__:
                continue
            value = module.__dict__[attr]
            value = tuple(value) if isinstance(value, torch.Size) else value
            if not is_plain_tree(value):
                raise ConfigurationError(f"attribute {attr!r} of module {name or '<model>'!r} is a "
                                         f"{type(value).__name__}, not plain data (numbers, strings, lists, "
                                         "tuples, dicts of those); it cannot be saved without pickling code")
            picked[attr] = value
        return picked

    return keep_named


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's memory as bytes, without numpy (a core install has only torch)."""
    flat = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    return ctypes.string_at(flat.data_ptr(), flat.numel())


_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL", torch.complex64: "C64"}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _DTYPE_NAMES[getattr(torch, _name)] = _code


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str) -> None:
    """Write ``tensors`` in the safetensors format (8-byte header size, JSON header, raw little-endian data)."""
    if sys.byteorder != "little":  # pragma: no cover - the raw bytes would be big-endian
        raise ConfigurationError("saving safetensors from Python on a big-endian machine is not supported")
    header: Dict[str, Any] = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in _DTYPE_NAMES:
            raise ConfigurationError(f"cannot save tensor {name!r}: dtype {tensor.dtype} has no safetensors code")
        data = raw_bytes(tensor) if tensor.numel() else b""
        header[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for data in blobs:
            handle.write(data)
