"""Side-by-side: build the dependency graph and prune 50% of channels, pruning_core vs torch-pruning 1.6.1.

Each (library, model) pair runs in its own process, ``--repeats`` times; the
table reports medians and the ratio pruning_core / torch-pruning (below 1 is
faster or smaller). A second section measures what ``import pruning_core`` costs on
top of ``import torch`` (see ``import_time.py``). Run with ``make bench``;
``--sections import`` reruns one section and keeps the other in the output file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cases import CASES  # noqa: E402
import import_time  # noqa: E402

LIBS = ("pruning_core", "torch_pruning")
SECTIONS = ("depgraph", "import")


def measure(lib: str, case: str, repeats: int) -> Dict[str, float]:
    runs: List[Dict] = []
    for _ in range(repeats):
        result = subprocess.run([sys.executable, os.path.join(HERE, "_bench_worker.py"), "--lib", lib, "--case", case],
                                capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    out = {key: statistics.median(r[key] for r in runs) for key in ("setup_s", "step_s", "total_s", "peak_extra_mb")}
    out["params_after"] = runs[0]["params_after"]
    out["params_before"] = runs[0]["params_before"]
    out["runs"] = all(r["pruned_model_runs"] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*", default=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--import-repeats", type=int, default=30, help="fresh processes per import-time command")
    parser.add_argument("--output", help="write the markdown tables here")
    args = parser.parse_args()
    sections = {}
    if "depgraph" in args.sections:
        sections["depgraph"] = depgraph_section(args)
    if "import" in args.sections:
        result = import_time.measure(args.import_repeats)
        print(json.dumps(result), file=sys.stderr)
        sections["import"] = import_time.markdown(result, shlex.join(["python", *sys.argv]))
    if args.output and os.path.exists(args.output):
        with open(args.output) as handle:
            for name, text in split_sections(handle.read()).items():
                sections.setdefault(name, text)
    text = "\n".join(sections[name] for name in SECTIONS if name in sections)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)


def split_sections(text: str) -> Dict[str, str]:
    """The sections of an existing results file, by name (the import-time one starts at its heading)."""
    head, marker, tail = text.partition(import_time.HEADING)
    found = {"depgraph": head.rstrip("\n") + "\n"} if head.strip() else {}
    if marker:
        found["import"] = marker + tail
    return found


def depgraph_section(args: argparse.Namespace) -> str:
    """Measure every case with both libraries; return the markdown table."""
    rows = []
    for case in args.cases:
        ours, theirs = (measure(lib, case, args.repeats) for lib in LIBS)
        rows.append((case, ours, theirs))
        print(f"{case}: {json.dumps(ours)} | {json.dumps(theirs)}", file=sys.stderr)
    import torch

    lines = [
        "# Dependency graph + 50% pruning: pruning_core vs torch-pruning 1.6.1",
        "",
        f"Command: `python benchmarks/bench_depgraph.py --repeats {args.repeats}` (`make bench`), "
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, torch {torch.__version__}, "
        "CPU, one thread, one process per measurement, median of repeats.",
        "",
        "Workload: `MagnitudePruner(model, example_inputs, importance=MagnitudeImportance(p=2), pruning_ratio=0.5,"
        " ignored_layers=[classifier])` then `step()`; imports are done before timing. Inputs: 1x3x224x224 images;"
        " 16 tokens for the 32-layer Llama (hidden 512, q/k/v/lm_head ignored in both, since torch-pruning "
        "1.6.1 never finishes with them). Peak memory is the growth of the process's peak RSS over the "
        "model-loaded baseline.",
        "",
        "| model | pruning_core s | torch-pruning s | time ratio | pruning_core MB | torch-pruning MB | memory ratio |"
        " params after (ours / theirs) | pruned model runs (ours / theirs) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case, ours, theirs in rows:
        if "error" in ours or "error" in theirs:
            lines.append(f"| {case} | {ours.get('error', round(ours.get('total_s', 0), 3))} | "
                         f"{theirs.get('error', round(theirs.get('total_s', 0), 3))} | - | - | - | - | - | - |")
            continue
        time_ratio = ours["total_s"] / theirs["total_s"]
        mem_ratio = ours["peak_extra_mb"] / max(theirs["peak_extra_mb"], 1e-9)
        lines.append(
            f"| {case} | {ours['total_s']:.3f} | {theirs['total_s']:.3f} | {time_ratio:.2f} | "
            f"{ours['peak_extra_mb']:.0f} | {theirs['peak_extra_mb']:.0f} | {mem_ratio:.2f} | "
            f"{ours['params_after'] / 1e6:.2f}M / {theirs['params_after'] / 1e6:.2f}M | "
            f"{'yes' if ours['runs'] else 'no'} / {'yes' if theirs['runs'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
