"""``pruning-core prune``: prune a model from a spec, save it, check the saved copy, report.

Every argument is checked before the model is built; then the phases run in order, each with a
progress bar on a terminal (one line each otherwise): loading, tracing, scoring (criteria that
need data), pruning, saving, verification (reload the saved copy), latency.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigurationError
from ..utils.progress import phase
from ..utils.tools import flatten_as_list
from . import report, saving
from .sources import check_runs, random_like, resolve, run_model
from .validate import CALIBRATED_CRITERIA, DATA_CRITERIA, check_prune_args, ignored_modules, uses_calibration


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prune", help="prune a model and save it",
                            description="Prune MODEL to a ratio, save it, reload the saved copy to check it, "
                                        "and report parameters, MACs, latency and changed layers. Exit status: 0 "
                                        "done, 1 the saved copy did not reload identically, 2 bad input.")
    parser.add_argument("model", nargs="?", help="torchvision:NAME, timm:NAME, hf:DIR, yolo:CONFIG.yaml, "
                                                 "file:path.py:factory, or a directory or .pt file written by this "
                                                 "command")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of channels to remove (0 <= r < 1)")
    parser.add_argument("--importance", default="l2",
                        help="criterion name, default l2 (`pruning-core plugins --all` lists every criterion)")
    parser.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels globally")
    parser.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    parser.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="NAME",
                        help="modules whose output channels are kept (put it after MODEL)")
    parser.add_argument("--iterative-steps", type=int, default=1)
    parser.add_argument("--compensate", default="none", choices=("none", "bias", "lstsq"),
                        help="repair the layers after removing channels: bias (add the removed channels' mean "
                             "contribution to the bias) or lstsq (refit the kept weights); needs --calib")
    parser.add_argument("--calib", default=None,
                        help=f"calibration data for {', '.join(sorted(DATA_CRITERIA | CALIBRATED_CRITERIA))} and "
                             "--compensate: a number of random batches, a .pt file with a tensor (split into "
                             "batches) or a list of batches, or for hf: models a text file (one sample per line, "
                             "tokenized with the model's tokenizer)")
    parser.add_argument("--input-shape", default=None, help="example input shape, for example 1,3,224,224")
    parser.add_argument("--output", "-o", required=True,
                        help="a directory (weights.safetensors + pruning.json; a transformers directory for hf: "
                             "models) or a .pt/.pth file")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--latency-budget", type=float, default=10.0, metavar="SECONDS",
                        help="time for the latency comparison (interleaved rounds; default 10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--low-memory", action="store_true",
                        help="stream the weights from the checkpoint one block at a time instead of loading the "
                             "model (hf: directories of safetensors; the hidden width is kept; no latency)")
    parser.add_argument("--max-memory", default="4GB", metavar="SIZE",
                        help="with --low-memory: calibration activations held in memory before they go to disk")
    parser.set_defaults(func=run)


def _calibration(source: Any, calib: Optional[str], data: Any, count_default: int = 4,
                 lines_per_batch: int = 8) -> List[Any]:
    if isinstance(data, list) and data and all(isinstance(line, str) for line in data):
        if source.encode_text is None:
            raise ConfigurationError(f"--calib {calib}: {source.spec} has no tokenizer to encode text with; give "
                                     "a .pt file of batches instead")
        return [source.encode_text(data[i:i + lines_per_batch]) for i in range(0, len(data), lines_per_batch)]
    if data is None:
        count = int(calib) if calib is not None else count_default
        make = source.make_batch or (lambda i: random_like(source.example_inputs))
        return [make(i) for i in range(count)]
    if isinstance(data, torch.Tensor):
        first = next((t for t in flatten_as_list(source.example_inputs) if isinstance(t, torch.Tensor)), None)
        batch = first.shape[0] if first is not None and first.ndim else 1
        return list(data.split(batch))
    return data


def _loss(output: Any) -> torch.Tensor:
    """A stand-in loss for scoring without labels: the mean square of every float output."""
    terms = [t.float().pow(2).mean() for t in flatten_as_list(output)
             if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not terms:
        raise ConfigurationError("the model's output has no floating-point tensor to derive a loss from")
    return torch.stack(terms).sum()


def _score_with_data(importance: Any, name: str, source: Any, batches: List[Any],
                     advance: Callable[[], None]) -> None:
    model = source.model
    if name == "activation":
        importance.reset()
        with torch.no_grad(), importance.record(model):
            for batch in batches:
                run_model(source, batch)
                advance()
        return
    model.zero_grad()
    if name == "hessian":
        importance.zero_grad()
    if name == "obdc":
        importance.reset()
        importance.prepare(model)
    try:
        for batch in batches:
            if name == "obdc":
                model.zero_grad()
            _loss(run_model(source, batch)).backward()
            if name == "hessian":
                importance.accumulate_grad(model)
            elif name == "obdc":
                importance.step()
            advance()
    finally:
        if name == "obdc":
            importance.remove_hooks()


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
            except Exception:  # a handler that cannot size this instance: leave it out of the report
                continue
    return widths


def _count(source: Any) -> Dict[str, Any]:
    from ..utils import count_ops_and_params

    macs, params = count_ops_and_params(source.model, source.example_inputs, forward_fn=source.forward_fn)
    return {"params": int(params), "macs": int(macs)}


def _output_layers(pruner: Any) -> set:
    """Layers whose output channels stay because they are the model's outputs (classifier, LM head)."""
    names = set()
    for key, notes in pruner.DG.frozen_reasons().items():
        if key.endswith("[out]") and "model output" in notes and "(dim" not in key:
            names.add(key[: -len(" [out]")])
    return names


def _unpruned_copy(source: Any) -> Optional[nn.Module]:
    """A copy of the model before pruning, timed against the pruned one in the same run."""
    try:
        return copy.deepcopy(source.model)
    except Exception:  # a model that cannot be copied is built again
        return resolve(source.spec).model.eval()


def run(args: argparse.Namespace) -> int:
    from .. import importance as importance_module
    from ..pruner import BasePruner
    from ..utils.latency import compare_latency

    calib_data = check_prune_args(args)
    if args.low_memory:
        from .streaming import run_streaming

        return run_streaming(args, calib_data)
    with phase("loading"):
        source = resolve(args.model, args.input_shape)
        check_runs(source, from_shape=bool(args.input_shape))
    model = source.model.eval()
    ignored = list(source.keep) + ignored_modules(model, args.ignore)
    importance = importance_module.create(args.importance)
    before = _count(source)
    widths_before = _layer_widths(model)
    original = _unpruned_copy(source) if not args.no_latency else None
    batches = _calibration(source, args.calib, calib_data) if uses_calibration(args) else []
    calibrated = args.importance in CALIBRATED_CRITERIA or args.compensate != "none"
    with phase("tracing"):
        pruner = BasePruner(model, source.example_inputs, importance=importance, pruning_ratio=args.ratio,
                            global_pruning=args.global_pruning, round_to=args.round_to, ignored_layers=ignored,
                            iterative_steps=args.iterative_steps, forward_fn=source.forward_fn,
                            calibration=batches if calibrated else None,
                            compensation=None if args.compensate == "none" else args.compensate)
    if args.importance not in DATA_CRITERIA:
        batches = []  # the pruner scores (and compensates) from calibration itself
    for step in range(1, args.iterative_steps + 1):
        suffix = f" {step}/{args.iterative_steps}" if args.iterative_steps > 1 else ""
        if batches:
            with phase(f"scoring{suffix}", total=len(batches)) as bar:
                _score_with_data(importance, args.importance, source, batches, bar.advance)
        with phase(f"pruning{suffix}"):
            pruner.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    after = _count(source)
    with torch.no_grad():
        expected = run_model(source, source.example_inputs)
    with phase("saving"):
        saved = saving.save(model, source, args.output)
    with phase("verification"):
        check = saving.reload_check(source, saved, expected, args.input_shape)
    latency = None
    if original is not None:
        latency = compare_latency(original, model, source.example_inputs, forward_fn=source.forward_fn,
                                  budget_s=args.latency_budget, lines=True).as_dict()
        if latency["rounds"]:
            before["latency_ms"], after["latency_ms"] = latency["original"]["wall_ms"], latency["pruned"]["wall_ms"]
    kept_names = sorted({name for name, module in model.named_modules() if any(module is k for k in ignored)} |
                        _output_layers(pruner))
    result = report.build(args, source, before, after, widths_before, _layer_widths(model), saved, check,
                          kept_names, pruner, latency)
    print(json.dumps(result, indent=2) if args.json else report.render(result))
    return 0 if check["ok"] else 1
