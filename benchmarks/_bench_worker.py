"""One measurement in a fresh process: build the graph and prune 50% with one library. Prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import CASES  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["pruning_core", "torch_pruning"], required=True)
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, example_inputs, ignored = CASES[args.case]()
    params_before = sum(p.numel() for p in model.parameters())
    if args.lib == "pruning_core":
        import pruning_core as lib

        lib._plugins.get_hub()  # plugin discovery happens once per process, on first use
    else:
        import torch_pruning as lib
    # Load lazily imported submodules outside the timed region, for both libraries.
    pruner_cls, importance_cls = lib.pruner.MagnitudePruner, lib.importance.MagnitudeImportance
    baseline = rss_mb()
    start = time.perf_counter()
    pruner = pruner_cls(model, example_inputs, importance=importance_cls(p=2), pruning_ratio=0.5,
                        ignored_layers=ignored)
    built = time.perf_counter()
    pruner.step()
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with torch.no_grad():
            model(example_inputs)
        runs = True
    except Exception:
        runs = False
    print(json.dumps({
        "lib": args.lib, "case": args.case, "setup_s": built - start, "step_s": done - built,
        "total_s": done - start, "peak_extra_mb": max(0.0, peak - baseline),
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
        "pruned_model_runs": runs,
    }))


if __name__ == "__main__":
    main()
