"""Turning a model spec from the command line into a model, through the plugins.

Specs are checked before anything is built: a directory that is not a saved model, a path
that does not exist or a transformers directory given without ``hf:`` is reported with what
was found and what was expected. ``file:`` paths are made absolute, so a saved model can be
inspected from another directory. A ``.pt`` file written by ``prune -o x.pt`` is a model spec
too. Errors raised by the user's own code (a factory, a forward) are shown with the user's
frames and error last.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any, List, Optional, Sequence

import torch

from ..calling import call_model
from ..errors import ConfigurationError, PruningError
from ..records import ModelSource

# Schemes shipped by optional plugin distributions, for the error message when they are missing.
OPTIONAL_SCHEMES = {"hf": "hf", "timm": "timm", "yolo": "yolo"}
FORMS = ("torchvision:NAME, file:path/to/module.py:factory, hf:DIR, timm:NAME, yolo:CONFIG.yaml, "
         "a directory or .pt file written by pruning-core prune")
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.dirname(m.__file__)) + os.sep for m in (torch, json))
_OUR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def is_pt_file(path: str) -> bool:
    return path.endswith((".pt", ".pth"))


def _listing(directory: str) -> str:
    names = sorted(os.listdir(directory))
    if not names:
        return "it is empty"
    return "found " + ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _check_directory(directory: str, spec: str) -> None:
    record_path = os.path.join(directory, "pruning.json")
    if os.path.isfile(record_path):
        try:
            with open(record_path) as handle:
                kind = json.load(handle).get("format")
        except (OSError, ValueError, AttributeError):
            kind = None  # read_record reports a damaged record precisely
        if kind == "pruning_core.hf/1":
            raise ConfigurationError(f"{spec} holds a transformers model saved by pruning_core_hf; give it as "
                                     f"hf:{spec}")
        return
    if os.path.isfile(os.path.join(directory, "config.json")):
        raise ConfigurationError(f"{spec} looks like a Hugging Face transformers directory (it has config.json); "
                                 f"give it as hf:{spec}")
    raise ConfigurationError(f"{spec} is a directory but not a model saved by pruning-core prune: expected "
                             f"pruning.json and weights.safetensors, {_listing(directory)}. A MODEL is one of: "
                             f"{FORMS}")


def normalize_spec(spec: str, known_schemes: Sequence[str]) -> str:
    """Check what can be checked without building the model; return the spec with absolute paths."""
    if os.path.isdir(spec):
        _check_directory(spec, spec)
        return os.path.abspath(spec)
    if os.path.isfile(spec):
        if is_pt_file(spec):
            return os.path.abspath(spec)
        raise ConfigurationError(f"{spec} is a file, not a model spec. A MODEL is one of: {FORMS}")
    scheme, colon, rest = spec.partition(":")
    if colon and (scheme in known_schemes or scheme in OPTIONAL_SCHEMES):
        if scheme == "file":
            path, _, factory = rest.rpartition(":")
            if not path or not factory:
                raise ConfigurationError(f"file specs look like file:path/to/module.py:factory, got {spec!r}")
            if not os.path.isfile(path):
                raise ConfigurationError(f"{spec}: {path} does not exist")
            return f"file:{os.path.abspath(path)}:{factory}"
        if scheme == "hf":
            if not os.path.isdir(rest):
                raise ConfigurationError(f"{spec}: {rest} is not a directory; hf: takes a local directory with "
                                         "config.json (models are never downloaded)")
            if not os.path.isfile(os.path.join(rest, "config.json")):
                raise ConfigurationError(f"{spec}: {rest} has no config.json; expected a transformers model "
                                         f"directory written by save_pretrained, {_listing(rest)}")
            return f"hf:{os.path.abspath(rest)}"
        return spec
    if not colon or os.sep in spec or is_pt_file(spec):
        raise ConfigurationError(f"{spec} does not exist (no such file or directory). A MODEL is one of: {FORMS}")
    return spec  # an unknown scheme: resolve() lists the known ones


def known_schemes() -> List[str]:
    from .._plugins import get_hub

    return sorted({s.scheme for s in get_hub().model_schemes()})


def parse_shape(text: str) -> List[int]:
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        shape = []
    if not shape or any(d <= 0 for d in shape):
        raise ConfigurationError(f"--input-shape must be positive integers like 1,3,224,224, got {text!r}")
    return shape


def user_error(exc: BaseException) -> str:
    """The user's part of a traceback (frames outside torch, the standard library and pruning_core), error last."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_LIBRARY_DIRS + (_OUR_DIR,)) and not f.filename.startswith("<")
              and f"{os.sep}pruning_core_" not in f.filename]
    lines = traceback.format_list(frames[-4:])
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "".join(lines) + message


def _from_pt(path: str) -> ModelSource:
    from .._plugins import get_hub
    from ..builtin.model_sources import rebuild_pruned
    from ..serialization import load_state_dict

    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ConfigurationError(f"{path} cannot be loaded with torch.load(weights_only=True) ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); a .pt MODEL must be written by "
                                 "pruning-core prune -o file.pt") from None
    base = payload.get("model_spec") if isinstance(payload, dict) else None
    return rebuild_pruned(path, base, lambda model: load_state_dict(model, payload),
                          hint="; a .pt MODEL must be written by pruning-core prune -o file.pt",
                          build=lambda spec: _built(spec, get_hub().resolve_model_spec))


def _built(spec: str, build: Any) -> Optional[ModelSource]:
    """``build(spec)``, with errors from the user's or a framework's code turned into one clear message."""
    try:
        return build(spec)
    except PruningError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"building the model {spec} failed:\n{user_error(exc)}") from None


def resolve(spec: str, input_shape: Optional[str] = None) -> ModelSource:
    """Build the model a spec names, with example inputs (``--input-shape`` replaces them)."""
    from .._plugins import get_hub

    hub = get_hub()
    schemes = known_schemes()
    spec = normalize_spec(spec, schemes)
    if input_shape and spec.startswith("hf:"):
        raise ConfigurationError("--input-shape does not apply to hf: models: their example inputs come from the "
                                 "tokenizer (or the image size in the config)")
    source = _from_pt(spec) if is_pt_file(spec) and os.path.isfile(spec) else _built(spec, hub.resolve_model_spec)
    if source is None:
        scheme = spec.partition(":")[0]
        examples = ", ".join(s.example for s in hub.model_schemes())
        hint = ""
        if scheme in OPTIONAL_SCHEMES and scheme not in schemes:
            hint = f' The {scheme!r} scheme comes with the plugin extra: pip install "pruning-core[{OPTIONAL_SCHEMES[scheme]}]".'
        raise ConfigurationError(f"unknown model spec {spec!r}. Known schemes: {', '.join(schemes)} "
                                 f"(for example {examples}).{hint}")
    if input_shape:
        source.example_inputs = torch.randn(*parse_shape(input_shape))
    if source.example_inputs is None:
        raise ConfigurationError(f"{spec} gives no example inputs; pass --input-shape (for example 1,3,224,224)")
    return source


def describe_inputs(inputs: Any) -> str:
    from ..utils.tools import flatten_as_list

    shapes = ["x".join(map(str, t.shape)) for t in flatten_as_list(inputs) if isinstance(t, torch.Tensor)]
    return ("a tensor of shape " if len(shapes) == 1 else "tensors of shapes ") + ", ".join(shapes)


def check_runs(source: ModelSource, from_shape: bool) -> Any:
    """Run the model once on its example inputs; a failure names the model and ends with the user's error."""
    source.model.eval()
    try:
        with torch.no_grad():
            return run_model(source, source.example_inputs)
    except Exception as exc:
        given = " (given by --input-shape)" if from_shape else ""
        raise ConfigurationError(f"{source.spec} ({type(source.model).__name__}) fails on its example inputs, "
                                 f"{describe_inputs(source.example_inputs)}{given}:\n{user_error(exc)}") from None


def random_like(inputs: Any) -> Any:
    """A calibration batch shaped like the example inputs (token ids stay valid ids)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point():
            return torch.randn_like(inputs)
        high = int(inputs.max()) + 1 if inputs.numel() else 2
        return torch.randint(0, max(high, 2), inputs.shape, dtype=inputs.dtype, device=inputs.device)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(random_like(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: random_like(v) for k, v in inputs.items()}
    return inputs


def run_model(source: ModelSource, inputs: Any) -> Any:
    return call_model(source.model, inputs, source.forward_fn)
