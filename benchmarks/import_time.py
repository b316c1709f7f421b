"""What ``import pruning_core`` costs on top of ``import torch``, measured in fresh interpreters.

Two commands run alternately, in a random order within each pair, ``repeats`` times each:
``import torch`` alone and ``import torch; import pruning_core``. Each run is a new
process, so nothing is cached in memory (the ``.pyc`` files are, after the warm-up
runs, as for a user). Reported: the medians and interquartile ranges of the whole
process's wall time, the difference of the medians, and, measured inside the second
command, the time of ``import pruning_core`` itself and its ratio to ``import torch``
in the same process (a ratio moves less than seconds on a loaded machine).
``bench_depgraph.py`` calls :func:`measure` and :func:`markdown` for ``make bench``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

# The children run in the repository root, so `import pruning_core` finds this checkout's package first.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Import time: `import pruning_core` on top of `import torch`"

_CODE = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
before = set(sys.modules)
{extra}
t2 = time.perf_counter()
new = set(sys.modules) - before
print(json.dumps({{"torch_s": t1 - t0, "core_s": t2 - t1, "new_modules": len(new),
                  "graph_loaded": "pruning_core.graph" in new, "pluggy_loaded": "pluggy" in new}}))
"""
COMMANDS = {"torch": _CODE.format(extra="pass"), "torch+pruning_core": _CODE.format(extra="import pruning_core")}


def _run(code: str) -> Dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"import-time probe failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    sample = json.loads(result.stdout.strip().splitlines()[-1])
    sample["wall_s"] = wall
    return sample


def _spread(values: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "q1": quartiles[0], "q3": quartiles[2], "min": ordered[0]}


def measure(repeats: int, warmup: int = 2, seed: int = 0) -> Dict:
    """Run both commands ``repeats`` times each, interleaved; return the summary statistics (seconds)."""
    for _ in range(warmup):
        for code in COMMANDS.values():
            _run(code)
    rng = random.Random(seed)
    samples: Dict[str, List[Dict]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        order = list(COMMANDS)
        rng.shuffle(order)
        for name in order:
            samples[name].append(_run(COMMANDS[name]))
    ours = samples["torch+pruning_core"]
    return {
        "repeats": repeats,
        "wall": {name: _spread([s["wall_s"] for s in runs]) for name, runs in samples.items()},
        "torch_in_process": _spread([s["torch_s"] for s in ours]),
        "core_in_process": _spread([s["core_s"] for s in ours]),
        "core_ratio": _spread([s["core_s"] / s["torch_s"] for s in ours]),
        "new_modules": ours[0]["new_modules"],
        "graph_loaded": any(s["graph_loaded"] for s in ours),
        "pluggy_loaded": any(s["pluggy_loaded"] for s in ours),
        "loadavg": _loadavg(),
    }


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "unknown"


def _ms(stats: Dict[str, float]) -> str:
    return f"{stats['median'] * 1e3:.1f} ({stats['q1'] * 1e3:.1f}-{stats['q3'] * 1e3:.1f})"


def markdown(result: Dict, command: str) -> str:
    """The import-time section of ``benchmarks/results/depgraph.md``."""
    import platform

    import torch

    wall = result["wall"]
    diff = wall["torch+pruning_core"]["median"] - wall["torch"]["median"]
    ratio = result["core_ratio"]
    lines = [
        HEADING, "",
        f"Command: `{command}`, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {result['loadavg']} at the end. "
        f"{result['repeats']} fresh processes per command, the two commands interleaved in random order after "
        "warm-up runs; median (interquartile range) in milliseconds.",
        "",
        "| measured | median ms (q1-q3) | min ms |",
        "|---|---:|---:|",
        f"| process wall time, `python -c 'import torch'` | {_ms(wall['torch'])} | {wall['torch']['min'] * 1e3:.1f} |",
        f"| process wall time, `python -c 'import torch; import pruning_core'` | {_ms(wall['torch+pruning_core'])} | "
        f"{wall['torch+pruning_core']['min'] * 1e3:.1f} |",
        f"| difference of the two medians | {diff * 1e3:.1f} | - |",
        f"| `import torch`, inside the second process | {_ms(result['torch_in_process'])} | "
        f"{result['torch_in_process']['min'] * 1e3:.1f} |",
        f"| `import pruning_core` after `import torch`, inside the second process | "
        f"{_ms(result['core_in_process'])} | {result['core_in_process']['min'] * 1e3:.1f} |",
        "",
        f"`import pruning_core` costs {ratio['median'] * 100:.2f}% (q1-q3 {ratio['q1'] * 100:.2f}-"
        f"{ratio['q3'] * 100:.2f}%) of `import torch` in the same process, and adds {result['new_modules']} modules "
        f"to `sys.modules` (graph: {'loaded' if result['graph_loaded'] else 'not loaded'}, "
        f"pluggy: {'loaded' if result['pluggy_loaded'] else 'not loaded'}). "
        "The target is at most 50 ms on an idle machine; the difference of wall-time medians is noisy "
        "on a loaded one, the in-process time and the ratio less so.",
    ]
    return "\n".join(lines) + "\n"
