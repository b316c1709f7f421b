"""Prune one sweep model with one library in this process; print one JSON line with the outcome."""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
import traceback
import warnings
from typing import Any, Dict, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep_models  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def call(model: torch.nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def signature(output: Any, kind: str) -> Any:
    """Output structure and tensor shapes; detections vary in count, so only their trailing dims count."""
    if isinstance(output, torch.Tensor):
        return list(output.shape[1:]) if kind == "detection" else list(output.shape)
    if isinstance(output, dict):
        return {key: signature(value, kind) for key, value in sorted(output.items())}
    if isinstance(output, (list, tuple)):
        return [signature(value, kind) for value in output]
    return type(output).__name__


def macs(model: torch.nn.Module, inputs: Any) -> Optional[int]:
    """Multiply-accumulates of one forward, or None where torch's counter cannot follow the model."""
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            call(model, inputs)
    except Exception:  # FlopCounterMode's module tracker trips on some models (timm CaiT)
        return None
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["pruning_core", "torch_pruning"], required=True)
    parser.add_argument("--suite", choices=["torchvision", "timm"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timm-list", required=True)
    parser.add_argument("--memory-gib", type=float, default=0, help="address-space limit (0: none)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time this many prunings (fresh copies after the first); graph_s/prune_s are medians")
    args = parser.parse_args()
    if args.memory_gib > 0:  # set here, not with preexec_fn: the sweep starts workers from threads
        limit = int(args.memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    case = next(c for c in sweep_models.cases((args.suite,), args.timm_list) if c.name == args.model)
    result: Dict[str, Any] = {"lib": args.lib, "suite": args.suite, "model": args.model, "kind": case.kind}
    stage = "build"
    try:
        model, inputs = case.build()
        keep = sweep_models.timm_output_layers(model) if args.suite == "timm" else \
            sweep_models.output_layers(model, case.kind)
        stage = "reference forward"
        reference = signature(call(model, inputs), case.kind)
        result["params_before"] = sum(p.numel() for p in model.parameters())
        stage = "counting MACs"
        result["macs_before"] = macs(model, inputs)
        if args.lib == "pruning_core":
            import pruning_core as lib

            lib._plugins.get_hub()
        else:
            import torch_pruning as lib
        pruner_cls, importance = lib.pruner.MagnitudePruner, lib.importance.MagnitudeImportance(p=2)
        example = list(inputs) if isinstance(inputs, tuple) else inputs
        # repeats prune fresh copies of the unpruned model after the first (measured) run
        pristine = copy.deepcopy(model) if args.repeat > 1 else None
        keep_names = [name for name, m in model.named_modules() if any(m is k for k in keep)]
        baseline = rss_mb()
        times = []
        for run in range(args.repeat):
            target = model if run == 0 else copy.deepcopy(pristine)
            modules = dict(target.named_modules())
            ignored = keep if run == 0 else [modules[name] for name in keep_names]
            stage = "graph"
            start = time.perf_counter()
            pruner = pruner_cls(target, example, importance=importance, pruning_ratio=args.ratio,
                                ignored_layers=ignored)
            built = time.perf_counter()
            stage = "prune"
            pruner.step()
            times.append((built - start, time.perf_counter() - built))
            if run == 0:
                peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline)
        graph_runs, prune_runs = [t[0] for t in times], [t[1] for t in times]
        result.update(graph_s=statistics.median(graph_runs), prune_s=statistics.median(prune_runs), peak_extra_mb=peak)
        if args.repeat > 1:
            result.update(graph_runs=graph_runs, prune_runs=prune_runs)
        stage = "pruned forward"
        after = signature(call(model, inputs), case.kind)
        result["params_after"] = sum(p.numel() for p in model.parameters())
        result["macs_after"] = macs(model, inputs)
        result["same_output_shape"] = after == reference
        reduced = result["params_after"] < result["params_before"]
        result["status"] = "ok" if after == reference and reduced else \
            ("output shape changed" if after != reference else "nothing pruned")
    except Exception as error:  # the sweep records every failure, whatever its type
        result["status"] = f"error in {stage}"
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        result["where"] = traceback.format_exc(limit=-3).strip().splitlines()[-3:-1]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
