"""Checks of every ``prune`` argument, done before any model is built or timed.

Each failure is a :class:`pruning_core.ConfigurationError` naming the argument and what to
do; the command line turns it into a message and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, List, Optional

import torch

from ..errors import ConfigurationError
from .sources import is_pt_file, parse_shape

# Criteria the command line scores itself from --calib batches (gradients or recorded activations).
DATA_CRITERIA = {"taylor", "hessian", "activation", "obdc"}
# Criteria the pruner scores from calibration statistics (``calibration=``); compensation needs them too.
CALIBRATED_CRITERIA = {"wanda", "flap", "obs"}
COMPENSATIONS = ("none", "bias", "lstsq")
TEXT_SUFFIXES = (".txt", ".text")


def uses_calibration(args: argparse.Namespace) -> bool:
    """Whether this run feeds --calib batches to anything."""
    return (args.importance in DATA_CRITERIA or args.importance in CALIBRATED_CRITERIA
            or args.compensate != "none")


def load_text_lines(path: str) -> List[str]:
    """Non-empty lines of a --calib text file (one sample per line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--calib {path} cannot be read as UTF-8 text: {exc}") from None
    if not lines:
        raise ConfigurationError(f"--calib {path} has no non-empty lines; give one calibration text per line")
    return lines


def check_model_argument(args: argparse.Namespace) -> None:
    """``--ignore a b`` takes every word up to the next option; catch it swallowing the model."""
    if args.model:
        return
    swallowed = [name for name in args.ignore if ":" in name or os.sep in name or os.path.exists(name)]
    if swallowed:
        raise ConfigurationError(f"--ignore takes every name up to the next option, so it also took the model "
                                 f"{swallowed[-1]!r}; put --ignore after the model (prune MODEL --ignore NAME ...)")
    raise ConfigurationError("the MODEL argument is missing (pruning-core prune MODEL --ratio R --output OUT)")


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_output(output: str, model_spec: str) -> None:
    """The output can be written: a .pt/.pth file, or a directory (new or existing)."""
    if not output:
        raise ConfigurationError("--output is empty; give a directory or a .pt file")
    as_file = is_pt_file(output)
    if os.path.exists(output):
        if as_file and os.path.isdir(output):
            raise ConfigurationError(f"--output {output} is an existing directory; a .pt/.pth output is a file, so "
                                     "give a file path (or drop the suffix to save a directory)")
        if not as_file and not os.path.isdir(output):
            raise ConfigurationError(f"--output {output} exists and is a file; prune saves a directory there "
                                     "(weights.safetensors + pruning.json). Give a new path, or one ending in "
                                     ".pt to save a single file")
    existing = _nearest_existing(output if not os.path.exists(output) else output)
    if not os.path.isdir(existing) and existing != os.path.abspath(output):
        raise ConfigurationError(f"--output {output}: {existing} is a file, so nothing can be created below it")
    probe = existing if os.path.isdir(existing) else os.path.dirname(existing)
    try:  # os.access says yes to root even on read-only or virtual file systems: really try
        handle, name = tempfile.mkstemp(prefix=".pruning-core-", dir=probe)
        os.close(handle)
        os.remove(name)
    except OSError as exc:
        raise ConfigurationError(f"--output {output}: cannot write in {probe} ({exc.strerror or exc}); choose "
                                 "another place") from None
    model_path = model_spec[3:] if model_spec.startswith("hf:") else model_spec
    if os.path.exists(model_path) and os.path.realpath(model_path) == os.path.realpath(output):
        raise ConfigurationError(f"--output {output} is the model being pruned; save the result somewhere else")


def load_calibration_file(path: str) -> Any:
    """The batches in a ``--calib`` .pt file: a tensor (split into batches later) or a list of batches."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ConfigurationError(f"--calib {path} cannot be read with torch.load(weights_only=True): "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ConfigurationError(f"--calib {path} holds a single number; expected a tensor of samples or a "
                                     "list of batches")
        return data
    if isinstance(data, (list, tuple)) and data:
        return list(data)
    raise ConfigurationError(f"--calib {path} must hold a tensor or a non-empty list of batches, "
                             f"found {type(data).__name__}")


def check_prune_args(args: argparse.Namespace) -> Optional[Any]:
    """Validate ``prune``'s arguments; returns the loaded ``--calib`` file contents, if one was given."""
    from .. import importance as importance_module

    check_model_argument(args)
    if not 0.0 <= args.ratio < 1.0:
        raise ConfigurationError(f"--ratio must be in [0, 1) (the fraction of channels removed), got {args.ratio}")
    if args.iterative_steps < 1:
        raise ConfigurationError(f"--iterative-steps must be at least 1, got {args.iterative_steps}")
    if args.round_to is not None and args.round_to < 1:
        raise ConfigurationError(f"--round-to must be a positive number of channels, got {args.round_to}")
    if args.compensate not in COMPENSATIONS:
        raise ConfigurationError(f"--compensate must be one of {', '.join(COMPENSATIONS)}, got {args.compensate!r}")
    if args.latency_budget <= 0:
        raise ConfigurationError(f"--latency-budget must be a positive number of seconds, got {args.latency_budget}")
    importance_module.names()  # loads the registry; an unknown name raises with close matches below
    from .._plugins import get_hub

    get_hub().importance_criteria().get(args.importance)
    if args.input_shape:
        if args.model.startswith("hf:"):
            raise ConfigurationError("--input-shape does not apply to hf: models: their example inputs come from "
                                     "the tokenizer (or the image size in the config)")
        parse_shape(args.input_shape)
    check_output(args.output, args.model)
    calib_data = None
    if args.calib is not None:
        if args.calib.isdigit():
            if int(args.calib) < 1:
                raise ConfigurationError("--calib must be at least 1 batch")
        elif not os.path.isfile(args.calib):
            raise ConfigurationError(f"--calib {args.calib}: no such file. Give a number of random batches (for "
                                     "example 8) or a .pt file holding a tensor of samples or a list of batches")
        elif args.calib.lower().endswith(TEXT_SUFFIXES):
            if not args.model.startswith("hf:"):
                raise ConfigurationError(f"--calib {args.calib}: text calibration needs a model with a tokenizer "
                                         "(an hf: model); give a .pt file of batches or a number instead")
            calib_data = load_text_lines(args.calib)
        else:
            calib_data = load_calibration_file(args.calib)
        if not uses_calibration(args):
            users = sorted(DATA_CRITERIA | CALIBRATED_CRITERIA)
            raise ConfigurationError(f"--calib feeds data to {', '.join(users)} and to --compensate bias/lstsq; "
                                     f"--importance {args.importance} without --compensate does not use it")
    return calib_data


def ignored_modules(model: torch.nn.Module, names: List[str]) -> List[torch.nn.Module]:
    lookup = dict(model.named_modules())
    missing = [name for name in names if name not in lookup]
    if missing:
        import difflib

        close = {n: difflib.get_close_matches(n, list(lookup), n=1) for n in missing}
        hints = "; ".join(f"{n!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for n, c in close.items())
        raise ConfigurationError(f"--ignore names modules this model does not have: {hints}. "
                                 "pruning-core inspect MODEL --layers lists the layer names")
    return [lookup[name] for name in names]
