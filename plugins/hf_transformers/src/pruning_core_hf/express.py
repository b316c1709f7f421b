"""Whether a transformers config can describe a pruned model, found by building models, not by family.

A model built from a config on the meta device costs milliseconds and shows
exactly what the config means. :func:`express` starts from the config the
model had before pruning, finds which dimensions each integer field controls
(by building with that field changed), solves every field whose dimensions all
changed consistently, and checks the result: the model the candidate config
builds must have the pruned model's parameter shapes and its scalar attributes
(head counts, ``scaling``, an embedding scale, ...). Only then is the config
used for stock ``from_pretrained``; otherwise the caller saves the plugin's form.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

Shapes = Dict[str, Tuple[int, ...]]
Field = Tuple[str, Optional[int]]  # (name, index into a list-valued field or None)
# Fields that never describe a pruned width: ids, lengths and counts of things pruning does not change.
SKIP_WORDS = ("token_id", "vocab", "position", "layers", "max_", "window", "bucket", "num_labels", "image_size",
              "patch_size", "num_channels", "seed", "_idx", "every", "interval", "experts_per_tok", "group",
              "depths", "stride", "sizes_", "chunk", "length")


def build(model_class: Any, config: Any) -> nn.Module:
    """``model_class(config)`` on the meta device, quietly; raises what transformers raises."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return model_class(config)
    finally:
        logger.setLevel(level)


def shapes(model: nn.Module) -> Shapes:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _scalar(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, (list, tuple)) and 0 < len(value) <= 16 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def scalars(model: nn.Module) -> Dict[str, Any]:
    """Plain number attributes of every module (``num_heads``, ``scaling``, ``scalar_embed_scale``, ...)."""
    found = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if not attr.startswith("_") and attr != "training" and _scalar(value):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def mismatch(model: nn.Module, built: nn.Module, before: Dict[str, Any]) -> Optional[str]:
    """How the model built from a config differs from ``model``, or None when it is the same.

    Every float attribute must match (scales enter the computation). An int
    attribute must match where pruning changed it (``before`` holds the values
    of the unpruned model); ints pruning left alone are bookkeeping the layers
    do not read (a decoder layer's ``hidden_size``), or the model would not run.
    """
    have, want = shapes(built), shapes(model)
    if set(have) != set(want):
        extra = sorted(set(have) ^ set(want))
        return f"the config builds other tensors ({', '.join(extra[:3])})"
    for name, shape in want.items():
        if have[name] != shape:
            return f"{name} would be {list(have[name])}, the pruned model has {list(shape)}"
    got = scalars(built)
    for name, value in scalars(model).items():
        relevant = isinstance(value, float) or not _same(before.get(name, value), value)
        if relevant and name in got and not _same(got[name], value):
            return f"{name} would be {got[name]!r}, the pruned model has {value!r}"
    return None


def _fields(config: Any) -> Iterator[Tuple[Field, int]]:
    for name, value in sorted(vars(config).items()):
        if name.startswith("_") or any(word in name for word in SKIP_WORDS):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            yield (name, None), value
        elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                      for v in value):
            for index, item in enumerate(value):
                if item > 1:
                    yield (name, index), item


def _with(config: Any, field: Field, value: int) -> Any:
    changed = copy.deepcopy(config)
    name, index = field
    if index is None:
        setattr(changed, name, value)
    else:
        items = list(getattr(changed, name))
        items[index] = value
        setattr(changed, name, items)
    return changed


def _effect(model_class: Any, config: Any, base: Shapes, field: Field, value: int
            ) -> Optional[Tuple[int, Dict[Tuple[str, int], float]]]:
    """The dimensions ``field`` controls: ``(probe value, {(tensor, dim): size change per unit})``."""
    for probe in (value + 1, value * 2):
        try:
            probed = shapes(build(model_class, _with(config, field, probe)))
        except Exception:
            continue
        if set(probed) != set(base):
            return None
        slopes = {}
        for name, shape in base.items():
            other = probed[name]
            if len(other) != len(shape):
                return None
            for dim, (a, b) in enumerate(zip(shape, other)):
                if a != b:
                    slopes[(name, dim)] = (b - a) / (probe - value)
        return probe, slopes
    return None


def _solve(model_class: Any, config: Any, target: Shapes) -> Tuple[Any, bool]:
    """Set every field whose dimensions all differ from ``target`` by the same number of units."""
    base = shapes(build(model_class, config))
    if set(base) != set(target):
        return config, False
    wrong = {(n, d) for n, s in base.items() for d, (a, b) in enumerate(zip(s, target[n])) if a != b}
    changed = False
    for field, value in list(_fields(config)):
        effect = _effect(model_class, config, base, field, value)
        if effect is None or not effect[1] or not set(effect[1]) <= wrong:
            continue
        solutions = {value + (target[n][d] - base[n][d]) / slope for (n, d), slope in effect[1].items()}
        if len(solutions) != 1:
            continue
        solution = solutions.pop()
        if solution >= 1 and float(solution).is_integer():
            config = _with(config, field, int(solution))
            changed = True
    return config, changed


def express(model: nn.Module, start: Any, original: Any) -> Tuple[Optional[Any], str]:
    """A config (a copy of ``start`` with solved fields) that builds ``model`` exactly, or None and why not.

    ``original`` is the config before pruning (it tells which attributes pruning changed).
    """
    model_class = type(model)
    target = shapes(model)
    try:
        before = scalars(build(model_class, original))
    except Exception as exc:
        return None, f"the config before pruning no longer builds the model ({type(exc).__name__}: {exc})"
    config = copy.deepcopy(start)
    reason = "no config field describes the pruned shapes"
    for _ in range(3):
        try:
            built = build(model_class, config)
        except Exception as exc:
            return None, f"transformers rejects the config: {type(exc).__name__}: {str(exc)[:200]}"
        problem = mismatch(model, built, before)
        if problem is None:
            return config, ""
        reason = problem
        try:
            config, changed = _solve(model_class, config, target)
        except Exception as exc:
            return None, f"transformers rejects the config: {type(exc).__name__}: {str(exc)[:200]}"
        if not changed:
            break
    return None, reason

