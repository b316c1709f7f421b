"""Saving and loading pruned models without pickling code.

Two forms, both rebuilt on a freshly constructed *unpruned* model:

* ``tp.state_dict(model)`` / ``tp.load_state_dict(model, sd)``: one dict of tensors and plain data,
  for ``torch.save`` and ``torch.load(weights_only=True)``.
* ``tp.save_pruned(model, directory)`` / ``tp.load_pruned(model, directory)``: weights in
  ``weights.safetensors``, the structure (new shapes, changed attributes, lost channels) in ``pruning.json``.

Loading checks the record against the model, resizes the recorded tensors, sets the recorded attributes
and loads the weights strictly. Anything wrong (a truncated file, an edited record, another model)
raises :class:`pruning_core.SerializationError` naming the problem, and the model is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._version import __version__
from ..errors import ConfigurationError, SerializationError
from ..graph.transaction import ModuleSnapshot
from ..records import class_key
from ..graph.record import adopt_record, changes, ensure_record, is_plain, kept_part
from .attributes import attribute_selector, raw_bytes, write_safetensors

FORMAT = "pruning_core.pruned/1"
WEIGHTS_FILE = "weights.safetensors"
RECORD_FILE = "pruning.json"


# -- plain-data encoding (tuples survive JSON) ---------------------------------------
def encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tuple"} and isinstance(value["tuple"], list):
            return tuple(decode(v) for v in value["tuple"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


# -- what is saved ----------------------------------------------------------------------
def structure_of(model: nn.Module, attributes: Union[None, str, Sequence[str]] = None) -> Dict[str, Any]:
    """Per module name: class, changed attributes, new tensor shapes and lost channels.

    :param attributes: also keep plain attributes pruning did not change: ``"all"`` (every public plain
        attribute of every module) or a list of names (dicts of plain data allowed). Default: only what
        pruning changed.
    """
    keep = attribute_selector(attributes)
    out: Dict[str, Any] = {}
    found_names: set = set()
    for name, module in model.named_modules():
        found = changes(module)
        extra = keep(name, module) if keep is not None else {}
        found_names.update(extra)
        if found is None and not extra:
            continue
        if found is None:
            found = {"attrs": {}, "shapes": {}, "removed": {}, "sizes": {}}
        attrs = {**extra, **found["attrs"]}
        out[name] = {"class": class_key(type(module)), "attrs": encode(attrs), "shapes": found["shapes"],
                     "removed": found["removed"],
                     "sizes": {k: v for k, v in found["sizes"].items() if k in found["removed"]}}
    if isinstance(attributes, (list, tuple, set)):
        missing = sorted(set(attributes) - found_names)
        if missing:
            raise ConfigurationError(f"attributes={sorted(attributes)!r}: no module of the model has a plain-data "
                                     f"attribute named {', '.join(map(repr, missing))}")
    return out


def _extra_state(model: nn.Module) -> Dict[str, Any]:
    """What each plugin's :class:`pruning_core.StateCodec` collects from ``model``, by codec name."""
    from .._plugins import get_hub

    state: Dict[str, Any] = {}
    for codec in get_hub().state_codecs().records():
        try:
            value = codec.collect(model)
        except Exception as exc:
            raise SerializationError(f"state codec {codec.name!r} of {codec.provider} failed to collect the "
                                     f"model's state: {type(exc).__name__}: {exc}") from exc
        if value is not None:
            if not is_plain_tree(encode(value)):
                raise SerializationError(f"state codec {codec.name!r} of {codec.provider} returned state that is "
                                         "not plain data (dicts, lists, strings, numbers)")
            state[codec.name] = encode(value)
    return state


def state_dict(model: nn.Module, attributes: Union[None, str, Sequence[str]] = None) -> Dict[str, Any]:
    """The pruned model's weights plus its structure record, as tensors and plain data only.

    Save it with ``torch.save``; load it with ``torch.load(path, weights_only=True)`` and
    :func:`load_state_dict` into a freshly built, unpruned model of the same architecture.

    :param attributes: ``"all"`` or a list of names to also keep your own plain attributes
        (``model.num_classes = 10``, ``block.note = "x"``); by default only what pruning changed.
    """
    payload = {
        "format": FORMAT,
        "pruning_core": __version__,
        "structure": structure_of(model, attributes),
        "extra": _extra_state(model),
    }
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    payload["weights_sha256"] = _tensors_digest(tensors)
    payload["record_sha256"] = _record_digest(payload)
    payload["state_dict"] = tensors
    return payload


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Checksum of names, dtypes, shapes and bytes of every tensor, in key order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type != "meta" and tensor.numel():
            digest.update(raw_bytes(tensor))
    return digest.hexdigest()


# -- loading ------------------------------------------------------------------------------
def _check_payload(payload: Any) -> Tuple[Dict[str, Any], Dict[str, Any], Mapping[str, torch.Tensor]]:
    if not isinstance(payload, Mapping):
        raise SerializationError(f"expected a pruned state dict (a dict), got {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        raise SerializationError(
            f"not a pruning_core pruned state dict: format is {payload.get('format')!r}, expected {FORMAT!r}. "
            "Was it saved with tp.state_dict(model)?")
    structure, extra, tensors = payload.get("structure"), payload.get("extra", {}), payload.get("state_dict")
    digest = payload.get("record_sha256")
    if digest is not None:  # written by tp.state_dict: both checksums must hold
        body = {k: payload.get(k) for k in ("format", "pruning_core", "structure", "extra", "weights_sha256")}
        if digest != _record_digest(body):
            raise SerializationError("the pruned state dict's record was modified after it was saved (its "
                                     "checksum does not match); save the pruned model again")
        if isinstance(tensors, Mapping) and payload.get("weights_sha256") != _tensors_digest(tensors):
            raise SerializationError("the pruned state dict's weights were modified after they were saved (their "
                                     "checksum does not match); save the pruned model again")
    if not isinstance(structure, dict) or not isinstance(extra, dict) or not isinstance(tensors, Mapping):
        raise SerializationError("the pruned state dict is incomplete: 'structure', 'extra' or 'state_dict' is "
                                 "missing or of the wrong type")
    for name, entry in structure.items():
        if not isinstance(entry, dict) or not {"class", "attrs", "shapes"} <= set(entry):
            raise SerializationError(f"the record of module {name!r} is malformed")
        for tname, shape in entry["shapes"].items():
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise SerializationError(f"the record gives {name}.{tname} an invalid shape {shape!r}")
        if not is_plain_tree(entry["attrs"]):
            raise SerializationError(f"the record of module {name!r} holds attributes that are not plain data")
        removed, sizes = entry.get("removed", {}), entry.get("sizes", {})
        if not isinstance(removed, dict) or not all(isinstance(v, list) and all(isinstance(i, int) for i in v)
                                                    for v in removed.values()):
            raise SerializationError(f"the record of module {name!r} lists removed channels that are not int lists")
        if not isinstance(sizes, dict) or not all(isinstance(v, int) and v >= 0 for v in sizes.values()):
            raise SerializationError(f"the record of module {name!r} gives channel counts that are not ints")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise SerializationError(f"state_dict entry {key!r} is not a tensor")
    return structure, extra, tensors


def is_plain_tree(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_tree(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_plain_tree(v) for v in value)
    return is_plain(value)


def rebuild_structure(model: nn.Module, structure: Dict[str, Any]) -> None:
    """Resize the recorded tensors and set the recorded attributes on a fresh model (no weights loaded);
    ``structure`` is what :func:`structure_of` returned for the pruned model."""
    modules = dict(model.named_modules())
    replaced: Dict[int, torch.Tensor] = {}  # keeps tied weights tied
    originals: List[torch.Tensor] = []  # keeps replaced tensors alive, so their ids cannot be reused
    for name, entry in structure.items():
        module = modules.get(name)
        if module is None:
            raise SerializationError(f"the record names module {name!r}, which this model does not have; "
                                     "load it into the same architecture it was pruned from")
        if class_key(type(module)) != entry["class"]:
            raise SerializationError(f"module {name!r} is a {class_key(type(module))} here but a {entry['class']} "
                                     "in the record; load it into the same architecture it was pruned from")
        ensure_record(module)  # the fresh state, before it is rebuilt: saving again needs it
        for tname, shape in entry["shapes"].items():
            store = module._parameters if tname in module._parameters else module._buffers
            current = store.get(tname)
            if current is None and store.get("weight") is not None and tname in store:  # a bias compensation made
                current = nn.Parameter(store["weight"].new_empty(0), requires_grad=store["weight"].requires_grad)
            if current is None:
                raise SerializationError(f"the record resizes {name}.{tname}, which this model does not have")
            if id(current) not in replaced:
                originals.append(current)
                unsaved = tname in module._non_persistent_buffers_set  # in no weights file: keep its kept channels
                fresh = kept_part(current, f"param:{tname}", shape, entry) if unsaved else None
                fresh = torch.empty(shape, dtype=current.dtype, device=current.device) if fresh is None else fresh
                replaced[id(current)] = (nn.Parameter(fresh, requires_grad=current.requires_grad)
                                         if isinstance(current, nn.Parameter) else fresh)
            store[tname] = replaced[id(current)]
        attrs = decode(entry["attrs"])
        for attr, value in attrs.items():
            setattr(module, attr, value)
        adopt_record(module, attrs, entry.get("removed", {}), entry.get("sizes", {}))
        init_flat = getattr(module, "_init_flat_weights", None)
        if callable(init_flat):
            init_flat()
    # A tied tensor resized through one owner must be resized in every owner.
    fresh_ids = {id(t) for t in replaced.values()}
    for module in modules.values():
        for store in (module._parameters, module._buffers):
            for tname, tensor in list(store.items()):
                if tensor is not None and id(tensor) in replaced and id(tensor) not in fresh_ids:
                    store[tname] = replaced[id(tensor)]
    del originals


def _restore_extra(model: nn.Module, extra: Dict[str, Any]) -> None:
    """Hand each saved state to the codec of that name (files of 0.1 used the plugin's name: ``"hf"``)."""
    from .._plugins import get_hub

    codecs = get_hub().state_codecs()
    for name, state in extra.items():
        if name not in codecs and name not in codecs.conflicts():
            raise SerializationError(f"the file holds state of {name!r}, which no installed plugin restores "
                                     "(pruning-core plugins lists what is installed)")
        codec = codecs.get(name)
        try:
            codec.restore(model, decode(state))
        except Exception as exc:
            raise SerializationError(f"state codec {name!r} of {codec.provider} failed to restore the saved "
                                     f"state: {type(exc).__name__}: {exc}") from exc


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """Rebuild the pruned structure on ``model`` (freshly built, unpruned) and load the weights.

    All or nothing: on any mismatch the model is restored and
    :class:`pruning_core.SerializationError` says what did not match.
    """
    structure, extra, tensors = _check_payload(state_dict)
    snapshot = ModuleSnapshot(model.modules())
    try:
        rebuild_structure(model, structure)
        _restore_extra(model, extra)
        # Check every key and shape first: load_state_dict copies matching tensors in place
        # before it reports mismatches, which would leave the model half-loaded.
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        problems = []
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        wrong = [f"{k} {tuple(tensors[k].shape)} vs {expected[k]}" for k in expected
                 if k in tensors and tuple(tensors[k].shape) != expected[k]]
        if missing:
            problems.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            problems.append(f"shape mismatch {', '.join(wrong[:5])}")
        if problems:
            raise SerializationError("the weights do not match this model: " + "; ".join(problems))
        model.load_state_dict(dict(tensors), strict=True)
    except SerializationError:
        snapshot.restore()
        raise
    except Exception as exc:
        snapshot.restore()
        raise SerializationError(f"could not load the pruned weights: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:300]}") from exc
    return model


# -- safetensors + JSON ---------------------------------------------------------------------
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pruned(model: nn.Module, directory: str, model_spec: Optional[str] = None,
                metadata: Optional[Dict[str, Any]] = None) -> str:
    """Write ``weights.safetensors`` and ``pruning.json`` into ``directory``; return the directory.

    :param model_spec: how to build the unpruned model (``"torchvision:resnet18"``), so
        ``pruning-core inspect directory`` can rebuild it.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigurationError(f"cannot save into {directory}: it exists and is a file; save_pruned writes a "
                                 "directory (weights.safetensors + pruning.json), so pass a new or existing "
                                 "directory path")
    payload = state_dict(model)
    os.makedirs(directory, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    first_name: Dict[Tuple[int, int, Tuple[int, ...]], str] = {}
    for name, tensor in payload["state_dict"].items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in first_name:
            aliases[name] = first_name[key]  # tied weights are stored once
            continue
        first_name[key] = name
        tensors[name] = tensor.contiguous().cpu()
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    write_safetensors(tensors, weights_path)
    record = {key: payload[key] for key in ("format", "pruning_core", "structure", "extra")}
    record.update({"aliases": aliases, "weights_sha256": _sha256(weights_path), "model_spec": model_spec,
                   "metadata": metadata or {}})
    record["record_sha256"] = _record_digest(record)
    with open(os.path.join(directory, RECORD_FILE), "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    return directory


def _record_digest(record: Dict[str, Any]) -> str:
    """Checksum of everything in the record except the checksum itself (canonical JSON)."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_record(directory: str) -> Dict[str, Any]:
    """The JSON record of a saved pruned model (validated, but no weights read)."""
    path = os.path.join(directory, RECORD_FILE)
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise SerializationError(f"{directory} holds no {RECORD_FILE}; save with tp.save_pruned(model, "
                                 "directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{path} is not valid JSON ({exc}); the file is truncated or was edited") from None
    if not isinstance(record, dict):
        raise SerializationError(f"{path} does not hold a pruning record")
    if record.get("record_sha256") != _record_digest(record):
        raise SerializationError(f"{path} was modified after it was saved (its checksum does not match); "
                                 "save the pruned model again")
    return record


def load_pruned(model: nn.Module, directory: str) -> nn.Module:
    """Rebuild a model saved with :func:`save_pruned` on ``model`` (freshly built, unpruned)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = read_record(directory)
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(weights_path):
        raise SerializationError(f"{directory} holds no {WEIGHTS_FILE}")
    expected = record.get("weights_sha256")
    if not isinstance(expected, str) or _sha256(weights_path) != expected:
        raise SerializationError(f"{weights_path} does not match {RECORD_FILE} (checksum differs): the weights "
                                 "were truncated, modified or come from another save")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise SerializationError(f"cannot read {weights_path}: {exc}") from None
    aliases = record.get("aliases", {})
    if not isinstance(aliases, dict):
        raise SerializationError(f"{RECORD_FILE}: 'aliases' must be a mapping")
    for alias, source in aliases.items():
        if source not in tensors:
            raise SerializationError(f"{RECORD_FILE}: alias {alias!r} points to missing tensor {source!r}")
        tensors[alias] = tensors[source]
    payload = {key: record.get(key) for key in ("format", "structure", "extra")}  # checked with the record
    payload["state_dict"] = tensors
    load_state_dict(model, payload)
    # Keep tied weights tied, as they were when saved.
    for alias, source in aliases.items():
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        target_module = model.get_submodule(owner) if owner else model
        source_module = model.get_submodule(src_owner) if src_owner else model
        value = getattr(source_module, src_attr)
        if isinstance(value, nn.Parameter):
            target_module._parameters[attr] = value
    return model


__all__ = ["state_dict", "load_state_dict", "save_pruned", "load_pruned", "read_record", "structure_of",
           "rebuild_structure", "FORMAT"]
