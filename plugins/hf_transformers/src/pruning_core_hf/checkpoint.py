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
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from pruning_core import SerializationError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")


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


class ShardWriter:
    """Writes numbered shards (``model-00001-of-000NN.safetensors``) and their index."""

    def __init__(self, directory: str, count: int) -> None:
        self.directory = directory
        self.count = count
        self.weight_map: Dict[str, str] = {}
        self.total = 0
        self.params = 0

    def write(self, number: int, tensors: Dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"model-{number:05d}-of-{self.count:05d}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(self.directory, name),
                  metadata={"format": "pt"})
        for key, tensor in tensors.items():
            self.weight_map[key] = name
            self.total += tensor.numel() * tensor.element_size()
            self.params += tensor.numel()

    def write_index(self) -> None:
        with open(os.path.join(self.directory, INDEX), "w") as handle:
            json.dump({"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))},
                      handle, indent=2)


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


__all__ = ["CheckpointReader", "ShardWriter", "CheckpointStore", "parameters_on_meta", "INDEX", "config_dtype", "default_dtype"]
