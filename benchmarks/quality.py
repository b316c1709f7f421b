"""Quality after pruning, pruning_core vs Torch-Pruning 1.6.1, on real weights and real data (issue 13).

Sections (each on the same model and the same calibration batches for both libraries):

- ``minilm``: the real all-MiniLM-L6-v2, heads and FFN width pruned at ratios 0.3 and 0.5;
  cosine between dense and pruned sentence embeddings and nearest-neighbour agreement
  on held-out standard-library docstring sentences.
- ``digits``: a CNN trained here on sklearn's digits, pruned to half its MACs; test
  accuracy with no fine-tuning and after one epoch.
- ``lm``: a Llama-shaped byte-level LM trained here on the standard library's sources
  (cached under build/quality-cache/), 30% of heads and FFN width pruned; held-out perplexity.

Every criterion x compensation of pruning_core and every criterion of Torch-Pruning is a
row; configurations this build does not have are reported as not available. Torch-Pruning
runs in a worker process with a per-row timeout. Run: ``make quality`` or
``python benchmarks/quality.py --output benchmarks/results/quality.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import run_info  # noqa: E402
import torch  # noqa: E402

from quality import report, runner  # noqa: E402
from quality.libs import OURS, TORCH_PRUNING  # noqa: E402
from quality.sections import QUICK, SECTIONS  # noqa: E402
from quality.train import CACHE_DIR  # noqa: E402

METRICS = ("cosine", "nn_agreement", "accuracy", "accuracy_ft", "macs_fraction", "perplexity")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress(name: str, total: int, start: float):
    done = [0]

    def on_row(result: Dict[str, Any]) -> None:
        done[0] += 1
        head = (f"[{name} {done[0]}/{total} {time.time() - start:.0f}s] {report.LIBRARY_LABELS[result['library']]} "
                f"{result['criterion']}/{result['compensation']} {result['ratio']} seed {result['seed']}: "
                f"{result['status']}")
        if result["status"] == "ok":
            values = " ".join(f"{k} {result[k]:.4g}" for k in METRICS if k in result)
            log(f"{head} {values} (params {result['params_after'] / 1e6:.3f} M, {result['seconds']:.1f} s)")
        else:
            log(f"{head}: {result.get('message', '')[:160]}")
    return on_row


def run_section(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    spec = SECTIONS[name]
    start = time.time()
    settings = dict(QUICK[name]) if args.quick else {}
    if name == "lm":
        settings["cache_dir"] = args.cache_dir
    log(f"== {name}: preparing model and data")
    bundle = spec.prepare(**settings)
    prepare_s = time.time() - start
    os.makedirs(os.path.join(args.cache_dir, "run"), exist_ok=True)
    bundle_path = os.path.join(args.cache_dir, "run", f"{name}.pt")
    torch.save(bundle, bundle_path)
    section = spec.cls(bundle)
    rows = runner.plan_rows(name, spec.ratios, args.random_seeds, args.criteria, args.compensations, args.libraries)
    ours = [r for r in rows if r["library"] == OURS]
    theirs = [r for r in rows if r["library"] == TORCH_PRUNING]
    on_row = progress(name, len(rows), start)
    log(f"== {name}: prepared in {prepare_s:.0f} s; {len(rows)} rows")
    results = runner.run_in_process(section, ours, on_row)
    results += runner.run_in_worker(os.path.abspath(__file__), name, bundle_path, theirs, args.row_timeout, on_row)
    return {"name": name, "title": spec.cls.title, "results": results, "notes": section.notes(),
            "info": bundle["info"], "ratios": spec.ratios, "render": spec.render,
            "prepare_s": prepare_s, "seconds": time.time() - start}


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # a missing distribution is reported as such in the header
        return "not installed"


def _commit_line(at_start: str) -> str:
    """The commit the run imported; the library is imported at the start, so later commits are not measured."""
    now = run_info.commit()
    return at_start if now == at_start else f"{at_start} (imported at the start; {now} by the end)"


def render_document(sections: List[Dict[str, Any]], command: str, total_s: float, args: Any) -> str:
    times = ", ".join(f"{s['name']} {s['seconds'] / 60:.1f} min" for s in sections)
    lines = ["# Quality after pruning: pruning_core vs Torch-Pruning 1.6.1", "",
             f"Command: {command}, {time.strftime('%Y-%m-%d')}, {total_s / 60:.1f} min in all "
             f"({times}). "
             f"Python {platform.python_version()}, torch {torch.__version__}, transformers {_version('transformers')}, "
             f"torch-pruning {_version('torch-pruning')}, torch threads: {torch.get_num_threads()}, pruning_core at "
             f"{_commit_line(args.commit_start)}. Machine: {os.cpu_count()} CPUs, load average {args.load_start:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end (times are wall-clock on a shared machine).", "",
             "Every row prunes a fresh copy of the same dense model with the same calibration batches and is "
             "measured on held-out data that calibration never saw. Torch-Pruning's rows run in a worker process "
             "that loads the very same bundle of weights and data (per-row timeout "
             f"{args.row_timeout:.0f} s). `random` is the mean ± standard deviation over {args.random_seeds} seeds; "
             "the other criteria are deterministic given the calibration set, so they ran once (one calibration "
             "draw, seed 0). No fine-tuning unless a column says so.", "",
             "How the statistics are gathered, the same for both libraries: `taylor` backpropagates the section's "
             "loss summed over the calibration batches; `hessian` runs one forward and backward per calibration "
             "sample and calls the criterion's `accumulate_grad` after each (Torch-Pruning 1.6.1's "
             "`accumulate_grad` checks `name not in self._accu_grad` but stores by parameter, so it keeps only the "
             "last sample's squared gradients; it is called as its docstring shows); `activation` records the "
             "calibration batches (Torch-Pruning's hook keeps only the last forward, so it gets all calibration "
             "samples as one batch).", ""]
    if args.quick:
        lines[1:1] = ["", "**Smoke run with --quick: tiny data and models, the numbers mean nothing.**"]
    for section in sections:
        table = report.aggregate(section["results"])
        lines += [f"## {section['title']}", ""]
        lines += section["render"](table, section["ratios"], section["info"])
        extra = report.inconsistent_heads(table) + report.failure_notes(table) + report.unavailable_summary(table)
        lines += [""] + [f"- {line}" for line in section["notes"] + extra]
        lines += ["", f"Section time: {section['seconds']:.0f} s (preparing {section['prepare_s']:.0f} s).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--output", help="write the markdown report here")
    parser.add_argument("--random-seeds", type=int, default=3, help="seeds for the random criterion (default 3)")
    parser.add_argument("--row-timeout", type=float, default=600.0, help="seconds per Torch-Pruning row")
    parser.add_argument("--criteria", nargs="*", help="only these criteria")
    parser.add_argument("--compensations", nargs="*", help="only these compensations (none, bias, lstsq)")
    parser.add_argument("--libraries", nargs="*", choices=[OURS, TORCH_PRUNING])
    parser.add_argument("--cache-dir", default=CACHE_DIR, help=f"trained models and bundles (default {CACHE_DIR})")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run; numbers mean nothing")
    parser.add_argument("--worker", nargs=2, metavar=("SECTION", "BUNDLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, path = args.worker
        runner.worker_main(SECTIONS[name].cls(torch.load(path, weights_only=True)))
        return
    start, args.load_start, args.commit_start = time.time(), os.getloadavg()[0], run_info.commit()
    sections = [run_section(name, args) for name in args.sections]
    command = "`" + " ".join(["python benchmarks/quality.py"] + sys.argv[1:]) + "`"
    if sys.argv[1:] == ["--output", "benchmarks/results/quality.md"]:
        command += " (what `make quality` runs)"
    text = render_document(sections, command, time.time() - start, args)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
