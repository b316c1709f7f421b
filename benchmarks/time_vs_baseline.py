"""Graph+prune time against torch-pruning, for pruning_core as checked out and at an earlier commit, in one run.

The sweep's time ratios come from single timings taken hours apart on a shared machine, so two sweeps
cannot say whether pruning_core itself got slower. This script answers that: for a sample of the
sweep's models (every ``--every``-th of those both libraries pruned in the last sweep), each model is
pruned in its own process by torch-pruning, by pruning_core as checked out ("current") and by
pruning_core at ``--baseline`` (a git worktree under ``build/``), one after another in an order that
rotates per model. Each worker times ``--repeat`` prunings (fresh copies after the first) and reports
medians. Run with ``make bench-time``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import sweep  # noqa: E402
import sweep_models  # noqa: E402

PLUGIN_SOURCES = ("plugins/hf_transformers/src", "plugins/timm/src", "plugins/yolo/src")
VARIANTS = ("torch_pruning", "current", "baseline")


def baseline_env(commit: str) -> Tuple[Dict[str, str], str]:
    """An environment whose PYTHONPATH puts pruning_core and its plugins at ``commit`` first, and the commit id."""
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = os.path.join(ROOT, "build", f"baseline-{sha}")
    if not os.path.isdir(tree):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, sha], check=True,
                       capture_output=True)
    paths = [tree] + [os.path.join(tree, p) for p in PLUGIN_SOURCES]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env, sha


def sample(store: str, every: int, max_wall_s: float) -> List[Tuple[str, str]]:
    """(suite, model) of every ``every``-th model both libraries pruned in ``store`` (torch-pruning in time)."""
    records: Dict[Tuple[str, str, str], Dict] = {}
    with open(store) as handle:
        for line in handle:
            r = json.loads(line)
            records[(r["lib"], r["suite"], r["model"])] = r
    both = [(suite, model) for lib, suite, model in records if lib == "pruning_core"
            and sweep._time_ratio(records[(lib, suite, model)], records.get(("torch_pruning", suite, model), {}))
            is not None and records[("torch_pruning", suite, model)].get("wall_s", 0) <= max_wall_s]
    return sorted(both)[::every]


def total(record: Dict) -> Optional[float]:
    return record["graph_s"] + record["prune_s"] if record.get("status") == "ok" else None


def render(rows: List[Dict], command: str, sha: str, repeat: int, started: str, minutes: float) -> str:
    def ratio(row: Dict, variant: str) -> Optional[float]:
        ours, theirs = total(row[variant]), total(row["torch_pruning"])
        return None if ours is None or theirs is None else ours / theirs

    def spread(row: Dict, variant: str) -> str:
        runs = [g + p for g, p in zip(row[variant].get("graph_runs", []), row[variant].get("prune_runs", []))]
        return f"{min(runs):.3f}-{max(runs):.3f}" if runs else "-"

    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    lines = [
        "# pruning_core time against torch-pruning: current code and a baseline commit in one run", "",
        f"Command: `{command}`, started {started}, {minutes:.0f} min. Current: {head} (plus uncommitted changes, if "
        f"any); baseline: {sha}. Python {platform.python_version()}, {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.1f}.", "",
        "Each model is pruned in its own process by each variant, one after another (order rotated per model), "
        f"with the sweep's call (MagnitudeImportance(p=2), pruning_ratio=0.5, output layers kept, one thread). A "
        f"worker times {repeat} prunings (the first on the loaded model, then fresh copies) and reports the median "
        "graph+prune time; the range over the runs is given. Ratio = our median over torch-pruning's median.", "",
        "## Summary", "",
        "| suite | models | median ratio, current | median ratio, baseline | median current/baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for suite in sorted({r["suite"] for r in rows}):
        picked = [r for r in rows if r["suite"] == suite]
        cur = [x for x in (ratio(r, "current") for r in picked) if x is not None]
        base = [x for x in (ratio(r, "baseline") for r in picked) if x is not None]
        rel = [total(r["current"]) / total(r["baseline"]) for r in picked
               if total(r["current"]) is not None and total(r["baseline"]) is not None]
        lines.append(f"| {suite} | {len(picked)} | {statistics.median(cur):.2f} ({len(cur)}) | "
                     f"{statistics.median(base):.2f} ({len(base)}) | {statistics.median(rel):.2f} ({len(rel)}) |"
                     if cur and base and rel else f"| {suite} | {len(picked)} | - | - | - |")
    lines += ["", "## Models", "",
              "| suite | model | torch-pruning s (range) | current s (range) | baseline s (range) | ratio current "
              "| ratio baseline |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = []
        for variant in VARIANTS:
            t = total(r[variant])
            cells.append(f"{t:.3f} ({spread(r, variant)})" if t is not None else r[variant].get("status", "?"))
        ratios = [ratio(r, v) for v in ("current", "baseline")]
        lines.append(f"| {r['suite']} | {r['model']} | " + " | ".join(cells) + " | "
                     + " | ".join("-" if x is None else f"{x:.2f}" for x in ratios) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="779a967", help="commit to compare with (default: before issue 12)")
    parser.add_argument("--sweep", default=os.path.join(HERE, "results", "sweep.jsonl"),
                        help="sweep results to draw the sample from")
    parser.add_argument("--every", type=int, default=5, help="take every N-th model that both libraries pruned")
    parser.add_argument("--max-wall-s", type=float, default=60, help="skip models torch-pruning took longer on")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "time_vs_baseline.md"))
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    start = datetime.datetime.now()
    env, sha = baseline_env(args.baseline)
    by_name = {(c.suite, c.name): c for c in sweep_models.cases(("torchvision", "timm"), sweep.TIMM_LIST)}
    chosen = [by_name[key] for key in sample(args.sweep, args.every, args.max_wall_s) if key in by_name]
    rows = []
    for i, case in enumerate(chosen):
        row: Dict = {"suite": case.suite, "model": case.name}
        order = VARIANTS[i % 3:] + VARIANTS[:i % 3]
        for variant in order:
            lib = "torch_pruning" if variant == "torch_pruning" else "pruning_core"
            row[variant] = sweep.run_case(lib, case, args.timeout, 0.5, 10, repeat=args.repeat,
                                          env=env if variant == "baseline" else None)
        rows.append(row)
        shown = ", ".join(f"{v} {total(row[v]):.3f}" if total(row[v]) is not None else f"{v} {row[v].get('status')}"
                          for v in VARIANTS)
        print(f"[{i + 1}/{len(chosen)}] {case.suite} {case.name}: {shown}", flush=True)
    minutes = (datetime.datetime.now() - start).total_seconds() / 60
    text = render(rows, shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]), sha,
                  args.repeat, started, minutes)
    with open(args.output, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
