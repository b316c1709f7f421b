"""Where ``prune`` saves, and the check that what it saved loads back to the same model.

Three forms:

* ``out.pt``: ``tp.state_dict`` plus the model spec, for ``torch.load(weights_only=True)``;
* a directory: ``tp.save_pruned`` (``weights.safetensors`` + ``pruning.json``);
* for ``hf:`` models, a transformers directory: ``pruning_core_hf.save_pretrained`` plus the
  tokenizer and processor files of the source directory, so ``AutoModel...from_pretrained(out)``
  loads it when every layer has the same shape, and ``pruning_core_hf.from_pretrained(out)``
  always does.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..records import ModelSource
from .sources import is_pt_file, resolve, run_model

# Files of a transformers directory that are not the model itself: tokenizers and processors.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                    "chat_template.jinja")


def output_kind(output: str, spec: str) -> str:
    if is_pt_file(output):
        return "pt"
    return "hf" if spec.startswith("hf:") else "dir"


def save(model: nn.Module, source: ModelSource, output: str) -> Dict[str, Any]:
    """Save the pruned model; returns what the report says about it."""
    from .. import serialization

    kind = output_kind(output, source.spec)
    if kind == "pt":
        payload = serialization.state_dict(model)
        payload["model_spec"] = source.spec
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        torch.save(payload, output)
        return {"path": output, "format": "pt"}
    if kind == "dir":
        serialization.save_pruned(model, output, model_spec=source.spec)
        return {"path": output, "format": "pruned directory"}
    import pruning_core_hf

    saved = pruning_core_hf.save_pretrained(model, output)
    copied = _copy_tokenizer(source.spec[3:], output)
    stock = getattr(saved, "form", "stock") == "stock"  # the plugin says which form it wrote
    return {"path": output, "format": "transformers", "stock_loadable": stock, "copied": copied,
            "reason": getattr(saved, "reason", ""),
            "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0]}


def _copy_tokenizer(source_dir: str, output: str) -> List[str]:
    copied = []
    for name in sorted(os.listdir(source_dir)):
        path = os.path.join(source_dir, name)
        if os.path.isfile(path) and name in _TOKENIZER_FILES and not os.path.exists(os.path.join(output, name)):
            shutil.copy2(path, os.path.join(output, name))
            copied.append(name)
    return copied


def _compare(got: Any, expected: Any) -> Dict[str, Any]:
    from ..utils.tools import flatten_as_list

    a = [t for t in flatten_as_list(got) if isinstance(t, torch.Tensor)]
    b = [t for t in flatten_as_list(expected) if isinstance(t, torch.Tensor)]
    same_shapes = [tuple(t.shape) for t in a] == [tuple(t.shape) for t in b]
    diffs = [float((x.float() - y.float()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b)] \
        if same_shapes else [float("inf")]
    max_diff = max(diffs) if diffs else 0.0
    return {"weights_only": True, "max_abs_diff": max_diff, "ok": same_shapes and max_diff == 0.0}


def reload_check(source: ModelSource, saved: Dict[str, Any], expected: Any, input_shape: Optional[str]) -> Dict[str, Any]:
    """Load what was saved into a freshly built model (no pickled code) and compare outputs."""
    from .. import serialization

    output = saved["path"]
    if saved["format"] == "transformers":
        import pruning_core_hf

        fresh = ModelSource(pruning_core_hf.from_pretrained(output), source.example_inputs, source.spec,
                            forward_fn=source.forward_fn)
    else:
        fresh = resolve(source.spec, input_shape)
        if saved["format"] == "pt":
            serialization.load_state_dict(fresh.model, torch.load(output, weights_only=True))
        else:
            serialization.load_pruned(fresh.model, output)
    fresh.model.eval()
    with torch.no_grad():
        got = run_model(fresh, source.example_inputs)
    return _compare(got, expected)
