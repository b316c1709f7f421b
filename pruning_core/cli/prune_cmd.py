"""``pruning-core prune``: prune a model from a spec, save it, check the saved copy, report."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigurationError
from ..graph.trace import iter_tensors
from . import report
from .sources import random_like, resolve, run_model

DATA_CRITERIA = {"taylor", "hessian", "activation"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prune", help="prune a model and save it",
                            description="Prune MODEL to a ratio, save it, reload the saved copy to check it, "
                                        "and report parameters, MACs, latency and changed layers.")
    parser.add_argument("model", help="torchvision:NAME, timm:NAME, hf:PATH, yolo:CONFIG.yaml, "
                                      "file:path.py:factory, or a directory saved by this command")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of channels to remove (0 <= r < 1)")
    parser.add_argument("--importance", default="l2", help="criterion name (pruning-core plugins --all lists them)")
    parser.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels globally")
    parser.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    parser.add_argument("--ignore", nargs="*", default=[], metavar="NAME", help="modules whose outputs are kept")
    parser.add_argument("--iterative-steps", type=int, default=1)
    parser.add_argument("--calib", default=None,
                        help="calibration data for taylor/hessian/activation: a number of random batches, or a "
                             ".pt file with a tensor (split into batches) or a list of batches")
    parser.add_argument("--input-shape", default=None, help="example input shape, for example 1,3,224,224")
    parser.add_argument("--output", "-o", required=True,
                        help="a directory (weights.safetensors + pruning.json) or a .pt/.pth file")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def _calibration(source: Any, calib: Optional[str], count_default: int = 4) -> List[Any]:
    if calib is None:
        calib = str(count_default)
    if calib.isdigit():
        make = source.make_batch or (lambda i: random_like(source.example_inputs))
        return [make(i) for i in range(int(calib))]
    if not os.path.isfile(calib):
        raise ConfigurationError(f"--calib must be a number of batches or a .pt file, got {calib!r}")
    data = torch.load(calib, weights_only=True, map_location="cpu")
    if isinstance(data, torch.Tensor):
        batch = next(iter_tensors(source.example_inputs)).shape[0]
        return list(data.split(batch))
    if isinstance(data, (list, tuple)):
        return list(data)
    raise ConfigurationError(f"{calib} must hold a tensor or a list of batches")


def _loss(output: Any) -> torch.Tensor:
    """A stand-in loss for scoring without labels: the mean square of every float output."""
    terms = [t.float().pow(2).mean() for t in iter_tensors(output) if t.is_floating_point()]
    if not terms:
        raise ConfigurationError("the model's output has no floating-point tensor to derive a loss from")
    return torch.stack(terms).sum()


def _score_with_data(importance: Any, name: str, source: Any, batches: List[Any]) -> None:
    from ..utils.progress import progress

    model = source.model
    if name == "activation":
        importance.reset()
        with torch.no_grad(), importance.record(model):
            for batch in progress(batches, "calibration"):
                run_model(source, batch)
        return
    model.zero_grad()
    if name == "hessian":
        importance.zero_grad()
    for batch in progress(batches, "calibration"):
        _loss(run_model(source, batch)).backward()
        if name == "hessian":
            importance.accumulate_grad(model)


def _layer_widths(model: nn.Module) -> Dict[str, Any]:
    from .._plugins import get_hub

    registry = get_hub().handlers()
    widths = {}
    for name, module in model.named_modules():
        spec = registry.lookup(type(module))
        if spec is not None:
            try:
                widths[name] = (type(module).__name__, int(spec.handler.get_in_channels(module)),
                                int(spec.handler.get_out_channels(module)))
            except Exception:
                continue
    return widths


def _measure(source: Any, latency: bool) -> Dict[str, Any]:
    from ..utils import count_ops_and_params
    from ..utils.benchmark import measure_latency

    macs, params = count_ops_and_params(source.model, source.example_inputs, forward_fn=source.forward_fn)
    result: Dict[str, Any] = {"params": int(params), "macs": int(macs)}
    if latency:
        mean, std = measure_latency(source.model, source.example_inputs, forward_fn=source.forward_fn)
        result["latency_ms"] = round(mean, 3)
        result["latency_std_ms"] = round(std, 3)
    return result


def _save(model: nn.Module, output: str, spec: str) -> str:
    from .. import serialization

    if output.endswith((".pt", ".pth")):
        payload = serialization.state_dict(model)
        payload["model_spec"] = spec
        directory = os.path.dirname(os.path.abspath(output))
        os.makedirs(directory, exist_ok=True)
        torch.save(payload, output)
        return output
    serialization.save_pruned(model, output, model_spec=spec)
    return output


def _reload_check(spec: str, output: str, inputs: Any, expected: Any, input_shape: Optional[str]) -> Dict[str, Any]:
    """Build the unpruned model again, load what was saved (no pickled code), compare outputs."""
    from .. import serialization

    fresh = resolve(spec, input_shape)
    if output.endswith((".pt", ".pth")):
        serialization.load_state_dict(fresh.model, torch.load(output, weights_only=True))
    else:
        serialization.load_pruned(fresh.model, output)
    fresh.model.eval()
    with torch.no_grad():
        got = run_model(fresh, inputs)
    diffs = [float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
             for a, b in zip(iter_tensors(got), iter_tensors(expected))]
    same_shapes = [tuple(t.shape) for t in iter_tensors(got)] == [tuple(t.shape) for t in iter_tensors(expected)]
    max_diff = max(diffs) if diffs else 0.0
    return {"weights_only": True, "max_abs_diff": max_diff, "ok": same_shapes and max_diff == 0.0}


def _output_layers(pruner: Any) -> set:
    """Layers whose output channels stay because they are the model's outputs (classifier, LM head)."""
    names = set()
    for key, notes in pruner.DG.frozen_reasons().items():
        if key.endswith("[out]") and "model output" in notes and "(dim" not in key:
            names.add(key[: -len(" [out]")])
    return names


def run(args: argparse.Namespace) -> int:
    from .. import importance as importance_module
    from ..pruner import BasePruner
    from ..utils.progress import progress

    source = resolve(args.model, args.input_shape)
    model = source.model.eval()
    lookup = dict(model.named_modules())
    missing = [name for name in args.ignore if name not in lookup]
    if missing:
        raise ConfigurationError(f"--ignore names modules this model does not have: {', '.join(missing)}")
    importance = importance_module.create(args.importance)
    before = _measure(source, not args.no_latency)
    widths_before = _layer_widths(model)
    batches = _calibration(source, args.calib) if args.importance in DATA_CRITERIA else []
    ignored = list(source.keep) + [lookup[name] for name in args.ignore]
    pruner = BasePruner(model, source.example_inputs, importance=importance, pruning_ratio=args.ratio,
                        global_pruning=args.global_pruning, round_to=args.round_to, ignored_layers=ignored,
                        iterative_steps=args.iterative_steps, forward_fn=source.forward_fn)
    for _ in progress(range(args.iterative_steps), "pruning steps"):
        if batches:
            _score_with_data(importance, args.importance, source, batches)
        pruner.step()
    model.zero_grad(set_to_none=True)
    after = _measure(source, not args.no_latency)
    with torch.no_grad():
        expected = run_model(source, source.example_inputs)
    saved = _save(model, args.output, source.spec)
    check = _reload_check(source.spec, saved, source.example_inputs, expected, args.input_shape)
    widths_after = _layer_widths(model)
    kept_names = sorted({name for name, module in lookup.items() if any(module is k for k in ignored)} |
                        _output_layers(pruner))
    result = report.build(args, source, before, after, widths_before, widths_after, saved, check, kept_names,
                          pruner)
    print(json.dumps(result, indent=2) if args.json else report.render(result))
    return 0 if check["ok"] else 1
