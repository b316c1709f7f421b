"""Resuming :func:`prune_checkpoint` after a killed run, from the blocks it had already written.

After each block, the run records in its work directory which blocks are done, the pruning
history so far, and every calibration batch's hidden state (the next block's input), together
with a fingerprint of everything that decides the result: the checkpoint's files, the options
and the calibration data. A rerun with the same fingerprint replays the history on the meta
skeleton, takes the written blocks' shapes from their shards (biases compensation added
included) and goes on from the next block; anything else starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn

PROGRESS = "resume.json"
HIDDEN = "resume-hidden"


def fingerprint(src: str, options: Dict[str, Any], batches: Optional[List[Any]]) -> Optional[str]:
    """A digest of what decides the result, or None when an option cannot be compared (an object)."""
    from pruning_core.utils.tools import flatten_as_list

    plain = (str, int, float, bool, type(None), list, tuple)
    if not all(isinstance(v, plain) for v in options.values()):
        return None
    digest = hashlib.sha256()
    files = sorted((name, os.path.getsize(os.path.join(src, name)), os.path.getmtime(os.path.join(src, name)))
                   for name in os.listdir(src) if os.path.isfile(os.path.join(src, name)))
    digest.update(json.dumps({"src": os.path.abspath(src), "files": files, "options": options}, sort_keys=True,
                             default=str).encode())
    for batch in batches or []:
        for tensor in flatten_as_list(batch):
            if isinstance(tensor, torch.Tensor):
                digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read(work: str, expected: Optional[str]) -> Optional[Dict[str, Any]]:
    """The recorded progress in ``work`` if it was made with the same fingerprint."""
    path = os.path.join(work, PROGRESS)
    if expected is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == expected and state.get("done", 0) > 0 else None


def write(work: str, print_: str, done: int, history: List[Dict[str, Any]], hidden: Iterable[torch.Tensor]) -> None:
    """Record that blocks ``0..done-1`` are written.

    The hidden states go to a folder of their own per block count and ``resume.json`` is replaced
    atomically after them, so a kill at any moment leaves a record whose hidden states are complete.
    """
    from safetensors.torch import save_file

    folder = os.path.join(work, f"{HIDDEN}-{done}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    count = 0
    for count, tensor in enumerate(hidden, 1):  # one at a time: spilled states are not all loaded at once
        save_file({"hidden": tensor.contiguous()}, os.path.join(folder, f"{count - 1}.safetensors"))
    temporary = os.path.join(work, PROGRESS + ".tmp")
    with open(temporary, "w") as handle:
        json.dump({"fingerprint": print_, "done": done, "batches": count, "history": history}, handle)
    os.replace(temporary, os.path.join(work, PROGRESS))
    _remove_hidden(work, keep=done)


def _remove_hidden(work: str, keep: Optional[int] = None) -> None:
    for name in os.listdir(work):
        if name.startswith(HIDDEN + "-") and name != f"{HIDDEN}-{keep}":
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)


def clean(work: str) -> None:
    """Remove the progress records (the run finished)."""
    _remove_hidden(work)
    if os.path.exists(os.path.join(work, PROGRESS)):
        os.remove(os.path.join(work, PROGRESS))


def hidden_states(work: str, state: Dict[str, Any]) -> Iterator[torch.Tensor]:
    """The recorded hidden states, one batch at a time."""
    from safetensors.torch import load_file

    folder = os.path.join(work, f"{HIDDEN}-{state['done']}")
    for batch in range(state["batches"]):
        yield load_file(os.path.join(folder, f"{batch}.safetensors"))["hidden"]


def restore_blocks(model: nn.Module, work: str, files: List[str]) -> Dict[str, Any]:
    """Give the skeleton the written blocks' tensor shapes (from the shards' headers); their index entries."""
    from safetensors import safe_open

    written: Dict[str, Any] = {}
    for name in files:
        with safe_open(os.path.join(work, name), framework="pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                module_name, _, attr = key.rpartition(".")
                module = model.get_submodule(module_name)
                meta = torch.empty(piece.get_shape(), dtype=_dtype(piece.get_dtype()), device="meta")
                if attr in module._buffers:
                    module._buffers[attr] = meta
                else:
                    module._parameters[attr] = nn.Parameter(meta, requires_grad=False)
                written[key] = (name, meta)
    return written


def _dtype(name: str) -> torch.dtype:
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool}.get(name, torch.float32)


__all__ = ["fingerprint", "read", "write", "hidden_states", "restore_blocks", "clean", "PROGRESS", "HIDDEN"]
