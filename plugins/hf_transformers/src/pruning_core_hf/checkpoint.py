"""Reading and writing safetensors checkpoints one block at a time, for :func:`prune_checkpoint`.

:class:`CheckpointReader` checks a checkpoint directory against the model its
config describes before anything runs (every shard present, every tensor the
index names inside its shard, every shape as the config says) and reads tensors
by name, opening each shard only while reading. :class:`CheckpointStore` puts
those tensors into a meta skeleton one block at a time and writes each pruned
block as its own shard (:class:`ShardWriter`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import struct
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from pruning_core import SerializationError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


class CheckpointReader:
    """The tensors of a safetensors checkpoint (one file or shards with an index), by name."""

    def __init__(self, directory: str) -> None:
        from safetensors import safe_open

        self.directory = directory
        index_path, single = os.path.join(directory, INDEX), os.path.join(directory, SINGLE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as handle:
                    weight_map = json.load(handle)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise SerializationError(f"{index_path} is not a safetensors index (expected JSON with a "
                                         f"'weight_map' of tensor name -> shard file): {exc}") from None
        elif os.path.isfile(single):
            weight_map = None
        else:
            pickled = sorted({os.path.basename(p) for pattern in PICKLE_PATTERNS
                              for p in glob.glob(os.path.join(directory, pattern))})
            if pickled:
                raise SerializationError(
                    f"{directory} holds pickle checkpoints ({', '.join(pickled[:3])}), which pruning_core never "
                    "loads (unpickling runs code). Convert them once, in an environment you trust: "
                    "model = AutoModelForCausalLM.from_pretrained(DIR); model.save_pretrained(NEW_DIR) "
                    "(transformers writes safetensors)")
            raise SerializationError(f"{directory} has no safetensors weights: expected {SINGLE} or {INDEX}")
        self.files: Dict[str, str] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.dtypes: Dict[str, str] = {}
        self.spans: Dict[str, Tuple[str, int, int]] = {}  # name -> (shard, first byte, end) of its data
        shards = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE]
        for shard in shards:
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                names = [n for n, f in (weight_map or {}).items() if f == shard]
                raise SerializationError(f"{index_path} names shard {shard} (for {len(names)} tensor(s) such as "
                                         f"{names[0] if names else '?'}), but {path} does not exist")
            try:
                with safe_open(path, framework="pt") as handle:
                    for name in handle.keys():
                        piece = handle.get_slice(name)
                        self.files[name] = shard
                        self.shapes[name] = tuple(piece.get_shape())
                        self.dtypes[name] = piece.get_dtype()
                self.spans.update(_spans(path, shard))
            except SerializationError:
                raise
            except Exception as exc:
                raise SerializationError(f"{path} cannot be read as safetensors: {exc}") from None
        for name, shard in (weight_map or {}).items():
            if self.files.get(name) != shard:
                raise SerializationError(f"{index_path} maps {name} to {shard}, but that shard has no such "
                                         "tensor; the index and the shards disagree (re-save the checkpoint)")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> List[str]:
        return list(self.files)

    def parameters(self) -> int:
        """How many numbers the checkpoint holds."""
        return sum(math.prod(shape) for shape in self.shapes.values())

    def size(self) -> int:
        """Bytes of tensor data in the checkpoint."""
        return sum(os.path.getsize(os.path.join(self.directory, f)) for f in set(self.files.values()))

    def read(self, names: Iterable[str]) -> Dict[str, torch.Tensor]:
        """The named tensors, each shard opened once and closed again."""
        from safetensors import safe_open

        by_file: Dict[str, List[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        found: Dict[str, torch.Tensor] = {}
        for shard, wanted in by_file.items():
            with safe_open(os.path.join(self.directory, shard), framework="pt") as handle:
                for name in wanted:
                    found[name] = handle.get_tensor(name)
        return found


def _spans(path: str, shard: str) -> Dict[str, Tuple[str, int, int]]:
    """Where each tensor's bytes lie in a safetensors file (its header, read as the format defines it)."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(length))
    start = 8 + length
    return {name: (shard, start + entry["data_offsets"][0], start + entry["data_offsets"][1])
            for name, entry in header.items() if name != "__metadata__"}


class ShardWriter:
    """Writes numbered shards (``model-00001-of-000NN.safetensors``) and their index."""

    def __init__(self, directory: str, count: int) -> None:
        self.directory = directory
        self.count = count
        self.weight_map: Dict[str, str] = {}
        self.total = 0
        self.params = 0

    def filename(self, number: int) -> str:
        return f"model-{number:05d}-of-{self.count:05d}.safetensors"

    def adopt(self, written: Dict[str, Tuple[str, torch.Tensor]]) -> None:
        """Count tensors an earlier (resumed) run wrote: ``{name: (file, tensor or meta tensor)}``."""
        for key, (name, tensor) in written.items():
            self.weight_map[key] = name
            self.total += tensor.numel() * tensor.element_size()
            self.params += tensor.numel()

    def write(self, number: int, tensors: Dict[str, torch.Tensor]) -> None:
        """One shard of in-memory tensors, written from their own memory (no serialized copy)."""
        parts = {key: tensor.detach().contiguous() for key, tensor in tensors.items()}
        unknown = sorted(key for key, tensor in parts.items() if tensor.dtype not in _DTYPE_NAMES)
        if unknown:
            raise SerializationError(f"cannot write {unknown[0]!r} ({parts[unknown[0]].dtype}) to safetensors here; "
                                     f"cast the model to float32, float16 or bfloat16 first")
        entries = [(key, _DTYPE_NAMES[t.dtype], list(t.shape), t.numel() * t.element_size()) for key, t in parts.items()]

        def data(handle: Any) -> None:
            for tensor in parts.values():
                if tensor.numel():
                    handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        self._emit(number, entries, data)

    def copy(self, number: int, reader: CheckpointReader, names: Dict[str, str]) -> None:
        """One shard of tensors copied byte for byte from the checkpoint (``{name here: name there}``)."""
        entries = []
        for key, source in names.items():
            _, begin, end = reader.spans[source]
            entries.append((key, reader.dtypes[source], list(reader.shapes[source]), end - begin))

        def data(handle: Any) -> None:
            for source in names.values():
                shard, begin, end = reader.spans[source]
                with open(os.path.join(reader.directory, shard), "rb") as original:
                    original.seek(begin)
                    left = end - begin
                    while left:
                        chunk = original.read(min(left, 1 << 24))
                        handle.write(chunk)
                        left -= len(chunk)
        self._emit(number, entries, data)

    def _emit(self, number: int, entries: List[Tuple[str, str, List[int], int]], data: Any) -> None:
        """The safetensors layout: header length (8 bytes, little-endian), JSON header, then the data."""
        header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key, dtype, shape, nbytes in entries:
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        name = self.filename(number)
        with open(os.path.join(self.directory, name), "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            data(handle)
        for key, _, shape, nbytes in entries:
            self.weight_map[key] = name
            self.total += nbytes
            self.params += math.prod(shape)

    def write_index(self) -> None:
        with open(os.path.join(self.directory, INDEX), "w") as handle:
            json.dump({"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))},
                      handle, indent=2)


def pack(names: Dict[str, str], reader: CheckpointReader, limit: int) -> List[List[str]]:
    """Model names in shards of at most ``limit`` bytes (a larger tensor gets a shard of its own)."""
    shards: List[List[str]] = []
    size = 0
    for name, key in names.items():
        shape, dtype = reader.shapes[key], DTYPES.get(reader.dtypes[key], torch.float32)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not shards or (size + nbytes > limit and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def copy_side_files(src: str, work: str, also_skip: Iterable[str] = ()) -> None:
    """Tokenizer, generation config and other small files; never weights, indexes or the config."""
    skip = {"config.json", INDEX, *also_skip}
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and name not in skip and not name.endswith(WEIGHT_SUFFIXES) \
                and not name.endswith(".index.json"):
            shutil.copy2(path, os.path.join(work, name))


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device and their buffers real (rotary tables...)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                    requires_grad=param.requires_grad)
    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def config_dtype(config: Any) -> Optional[torch.dtype]:
    """The floating dtype a config says its weights are stored in, if it says."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


@contextlib.contextmanager
def default_dtype(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Build modules in ``dtype``, as transformers' from_pretrained does (tables built in float32 stay so)."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _to_meta(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor, device="meta")


class CheckpointStore:
    """Loads blocks of a meta skeleton from a :class:`CheckpointReader` and writes them with a :class:`ShardWriter`.

    :param buffers: real values of the skeleton's buffers the checkpoint does not hold
        (non-persistent ones such as rotary frequency tables), by qualified name.
    """

    def __init__(self, model: nn.Module, reader: CheckpointReader, writer: ShardWriter,
                 buffers: Dict[str, torch.Tensor], key_of: Dict[str, str]) -> None:
        self.model = model
        self.reader = reader
        self.writer = writer
        self.buffers = buffers
        self.key_of = key_of  # model state-dict name -> checkpoint name
        self.names = {id(m): n for n, m in model.named_modules()}

    def _tensors(self, module: nn.Module, recurse: bool) -> Iterator[Tuple[nn.Module, str, str, bool]]:
        base = self.names[id(module)]
        subs = module.named_modules(prefix=base) if recurse else [(base, module)]
        for prefix, sub in subs:
            for name in sub._parameters:
                if sub._parameters[name] is not None:
                    yield sub, name, f"{prefix}.{name}" if prefix else name, True
            for name in sub._buffers:
                if sub._buffers[name] is not None:
                    yield sub, name, f"{prefix}.{name}" if prefix else name, False

    def _fill(self, module: nn.Module, recurse: bool) -> None:
        slots = list(self._tensors(module, recurse))
        wanted = [self.key_of[q] for _, _, q, _ in slots if q in self.key_of]
        found = self.reader.read(wanted)
        for sub, name, qualname, is_param in slots:
            key = self.key_of.get(qualname)
            if is_param:
                if key is None:
                    raise SerializationError(f"{self.reader.directory}: no tensor for {qualname}")
                sub._parameters[name] = nn.Parameter(found[key], requires_grad=False)
            elif key is not None:
                sub._buffers[name] = found[key]
            elif qualname in self.buffers:
                sub._buffers[name] = self.buffers[qualname]

    def _empty(self, module: nn.Module, recurse: bool) -> None:
        for sub, name, _, is_param in self._tensors(module, recurse):
            if is_param:
                sub._parameters[name] = nn.Parameter(_to_meta(sub._parameters[name]), requires_grad=False)
            else:
                sub._buffers[name] = _to_meta(sub._buffers[name])

    def load_prefix(self, modules: List[nn.Module]) -> None:
        for module in modules:
            self._fill(module, recurse=False)

    def release_prefix(self, modules: List[nn.Module]) -> None:
        for module in modules:
            self._empty(module, recurse=False)

    def load(self, index: int, block: nn.Module) -> None:
        self._fill(block, recurse=True)

    def save(self, index: int, block: nn.Module) -> None:
        prefix = self.names[id(block)]
        self.writer.write(index + 1, {f"{prefix}.{k}": v for k, v in block.state_dict().items()})

    def release(self, index: int, block: nn.Module) -> None:
        self._empty(block, recurse=True)


__all__ = ["CheckpointReader", "ShardWriter", "CheckpointStore", "parameters_on_meta", "INDEX", "DTYPES", "pack", "copy_side_files", "config_dtype", "default_dtype"]
