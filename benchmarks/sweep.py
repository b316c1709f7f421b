"""Coverage sweep: prune every torchvision model and the smallest model of every timm family, with
pruning_core and with torch-pruning 1.6.1, each model in its own process with a time limit.

A case succeeds when the pruned model runs, its output shapes are unchanged and it has fewer
parameters. Results stream to ``sweep.jsonl`` (so a long sweep can be resumed with ``--resume``) and
are rendered as ``sweep.md``. Run with ``make sweep``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sweep_models  # noqa: E402

LIBS = ("pruning_core", "torch_pruning")
TIMM_LIST = os.path.join(HERE, "timm_families.txt")


def run_case(lib: str, case: sweep_models.Case, timeout: float, ratio: float, memory_gib: float,
             repeat: int = 1, env: Optional[Dict[str, str]] = None) -> Dict:
    """Prune ``case`` with ``lib`` in a worker process (``env``: its environment, e.g. another PYTHONPATH)."""
    command = [sys.executable, os.path.join(HERE, "_sweep_worker.py"), "--lib", lib, "--suite", case.suite,
               "--model", case.name, "--ratio", str(ratio), "--timm-list", TIMM_LIST,
               # the worker caps its address space: torch-pruning can outgrow the machine (swin_t: 24 GB)
               "--memory-gib", str(memory_gib), "--repeat", str(repeat)]
    start = time.perf_counter()
    base = {"lib": lib, "suite": case.suite, "model": case.name, "kind": case.kind}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "error": f"no result within {timeout:.0f} s", "wall_s": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {**base, "status": "crashed", "error": tail[:300], "wall_s": time.perf_counter() - start}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


WEAK = 0.5  # a case that kept more than this share of its parameters is listed as weakly pruned


def _time_ratio(ours: Dict, theirs: Dict) -> Optional[float]:
    """Our graph+prune time over torch-pruning's, where both succeeded."""
    if ours.get("status") != "ok" or theirs.get("status") != "ok":
        return None
    return (ours["graph_s"] + ours["prune_s"]) / (theirs["graph_s"] + theirs["prune_s"])


def list_timm_families(path: str) -> None:
    """Write the smallest (fewest parameters) non-test model of every timm module, measured on the meta device."""
    import timm
    import torch

    rows: List[Tuple[str, str, int]] = []
    for module in timm.list_modules():
        best = None
        for name in timm.list_models(module=module):
            if name.startswith("test_"):
                continue
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # some entries need arguments the sweep does not give; skip them
                continue
            count = sum(p.numel() for p in model.parameters())
            if best is None or count < best[1]:
                best = (name, count)
        if best is not None:
            rows.append((module, best[0], best[1]))
            print(module, best[0], best[1], file=sys.stderr)
    with open(path, "w") as handle:
        handle.write(f"# module  smallest-model  params   (timm {timm.__version__}; "
                     "python benchmarks/sweep.py --list-timm)\n")
        for module, name, count in rows:
            handle.write(f"{module} {name} {count}\n")


def _fmt_m(value) -> str:
    return f"{value / 1e6:.2f}" if isinstance(value, (int, float)) else "-"


def _fmt_g(value) -> str:
    return f"{value / 1e9:.2f}" if isinstance(value, (int, float)) else "-"


def render(results: List[Dict], ratio: float, timeout: float, memory_gib: float) -> str:
    import torch

    by_key = {(r["suite"], r["model"], r["lib"]): r for r in results}
    models = sorted({(r["suite"], r["kind"], r["model"]) for r in results})
    lines = [
        "# Coverage sweep: pruning_core vs torch-pruning 1.6.1",
        "",
        f"Command: `make sweep` (`python benchmarks/sweep.py --output benchmarks/results`), "
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, torch {torch.__version__}, CPU.",
        "",
        f"Each model, with random weights, is pruned by `MagnitudePruner(model, example_inputs, "
        f"MagnitudeImportance(p=2), pruning_ratio={ratio}, ignored_layers=output_layers)` and `step()`, in its own "
        f"process (one thread, {timeout:.0f} s limit, address space capped at {memory_gib:g} GiB). "
        "Both libraries get the same call and the same output layers "
        "(`benchmarks/sweep_models.py`). **ok** means the pruned model runs, its output shapes are unchanged and it "
        "has fewer parameters. Times: graph = pruner construction (tracing and grouping), prune = `step()`. "
        "Memory: growth of peak RSS over the loaded model.",
        "",
        "## Summary",
        "",
        "| suite | kind | models | pruning_core ok | torch-pruning ok | median time ratio (both ok) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    groups = collections.defaultdict(list)
    for suite, kind, model in models:
        groups[(suite, kind)].append(model)
    for (suite, kind), names in sorted(groups.items()):
        counts = [sum(by_key.get((suite, n, lib), {}).get("status") == "ok" for n in names) for lib in LIBS]
        ratios = [r for r in (_time_ratio(by_key.get((suite, n, LIBS[0]), {}), by_key.get((suite, n, LIBS[1]), {}))
                              for n in names) if r is not None]
        median = f"{statistics.median(ratios):.2f} ({len(ratios)} models)" if ratios else "-"
        lines.append(f"| {suite} | {kind} | {len(names)} | {counts[0]} ({100 * counts[0] / len(names):.0f}%) | "
                     f"{counts[1]} ({100 * counts[1] / len(names):.0f}%) | {median} |")
    failures = [(suite, name) for suite, _, name in models
                if by_key.get((suite, name, LIBS[0]), {}).get("status") != "ok"]
    lines += ["", "## pruning_core cases that did not succeed", ""]
    if not failures:
        lines.append("None.")
    for suite, name in failures:
        record = by_key.get((suite, name, LIBS[0]), {})
        lines.append(f"- {suite} `{name}`: {record.get('status', 'not run')} {record.get('error', '')}".rstrip())
    weak = [(suite, name, by_key[(suite, name, LIBS[0])]) for suite, _, name in models
            if by_key.get((suite, name, LIBS[0]), {}).get("status") == "ok"
            and by_key[(suite, name, LIBS[0])]["params_after"] > WEAK * by_key[(suite, name, LIBS[0])]["params_before"]]
    lines += ["", f"## pruning_core cases that kept more than {WEAK:.0%} of the parameters", "",
              f"At pruning_ratio={ratio} most models keep 25-35% (both sides of most layers shrink); these kept more, "
              "because channels were refused (see the README's coverage section for why)."]
    lines += [""] + [f"- {suite} `{name}`: {r['params_after'] / r['params_before']:.0%} of the parameters kept"
                     for suite, name, r in weak] if weak else ["", "None."]
    for suite in ("torchvision", "timm"):
        entries = [m for m in models if m[0] == suite]
        if not entries:
            continue
        lines += [
            "", f"## {suite}", "",
            "| model | kind | ours | params M before → after | MACs G before → after | graph s | prune s | MB "
            "| torch-pruning | params M after | graph+prune s | MB | time ratio |",
            "|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        for _, kind, name in entries:
            ours, theirs = by_key.get((suite, name, LIBS[0]), {}), by_key.get((suite, name, LIBS[1]), {})
            ratio = _time_ratio(ours, theirs)
            ratio_cell = "-" if ratio is None else f"{ratio:.2f}"

            def status(r):
                return r.get("status", "not run") if r.get("status") == "ok" else \
                    f"{r.get('status', 'not run')}: {r.get('error', '')}".replace("|", "/")[:160]
            lines.append(
                f"| {name} | {kind} | {status(ours)} | {_fmt_m(ours.get('params_before'))} → "
                f"{_fmt_m(ours.get('params_after'))} | "
                f"{_fmt_g(ours.get('macs_before'))} → {_fmt_g(ours.get('macs_after'))} | "
                f"{ours.get('graph_s', 0):.2f} | {ours.get('prune_s', 0):.2f} | {ours.get('peak_extra_mb', 0):.0f} | "
                f"{status(theirs)} | {_fmt_m(theirs.get('params_after'))} | "
                f"{theirs.get('graph_s', 0) + theirs.get('prune_s', 0):.2f} | {theirs.get('peak_extra_mb', 0):.0f} | "
                f"{ratio_cell} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join(HERE, "results"), help="folder for sweep.jsonl and sweep.md")
    parser.add_argument("--suites", nargs="*", default=["torchvision", "timm"])
    parser.add_argument("--libs", nargs="*", default=list(LIBS), choices=LIBS)
    parser.add_argument("--models", nargs="*", help="only these model names")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="cases run in parallel, one thread each")
    parser.add_argument("--memory-gib", type=float, default=10, help="address-space limit of each case")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed prunings per case (fresh copies after the first); times are their medians")
    parser.add_argument("--resume", action="store_true", help="skip cases that already have a result")
    parser.add_argument("--render-only", action="store_true", help="rebuild sweep.md from sweep.jsonl")
    parser.add_argument("--list-timm", action="store_true", help="regenerate timm_families.txt and exit")
    args = parser.parse_args()
    if args.list_timm:
        list_timm_families(TIMM_LIST)
        return
    os.makedirs(args.output, exist_ok=True)
    store = os.path.join(args.output, "sweep.jsonl")
    previous: Dict[Tuple[str, str, str], Dict] = {}
    if os.path.exists(store):  # runs replace their own entries; the others are kept
        with open(store) as handle:
            for line in handle:
                record = json.loads(line)
                previous[(record["suite"], record["model"], record["lib"])] = record
    if not args.render_only:
        todo = [(lib, case) for case in sweep_models.cases(tuple(args.suites), TIMM_LIST) for lib in args.libs
                if (not args.models or case.name in args.models)
                and (args.models or not args.resume or (case.suite, case.name, lib) not in previous)]
        print(f"{len(todo)} runs, {args.jobs} at a time", file=sys.stderr)
        done_count = 0

        def one(item):
            return run_case(item[0], item[1], args.timeout, args.ratio, args.memory_gib, repeat=args.repeat)

        with ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(one, todo):
                done_count += 1
                previous[(result["suite"], result["model"], result["lib"])] = result
                print(f"[{done_count}/{len(todo)}] {result['lib']:14s} {result['model']:40s} {result['status']} "
                      f"{result.get('error', '')[:100]}", file=sys.stderr, flush=True)
                with open(store, "w") as handle:
                    for record in previous.values():
                        handle.write(json.dumps(record) + "\n")
    table = render(list(previous.values()), args.ratio, args.timeout, args.memory_gib)
    with open(os.path.join(args.output, "sweep.md"), "w") as handle:
        handle.write(table)
    print(table.split("## torchvision")[0])


if __name__ == "__main__":
    main()
