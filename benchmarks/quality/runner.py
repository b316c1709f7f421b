"""Running rows: pruning_core in this process, Torch-Pruning in a worker process with a timeout.

A row is one (library, criterion, compensation, ratio, seed). The worker reads the
same bundle file the parent wrote, so both libraries see identical weights and
data; it prints one ``ROW {json}`` line per row. If a row takes longer than the
timeout, or the worker dies, the row is recorded with what happened and a fresh
worker continues with the remaining rows.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List

import torch

from . import models
from .libs import COMPENSATIONS, NEW_CRITERIA, OURS, PRUNERS, SHARED_CRITERIA, TORCH_PRUNING, NotAvailable

Row = Dict[str, Any]


def plan_rows(section: str, ratios: List[float], random_seeds: int, criteria: List[str] | None = None,
              compensations: List[str] | None = None, libraries: List[str] | None = None) -> List[Row]:
    """Every row of a section: our criteria x compensations, Torch-Pruning's criteria."""
    libraries = libraries or [OURS, TORCH_PRUNING]
    rows: List[Row] = []
    for library in libraries:
        names = SHARED_CRITERIA + (NEW_CRITERIA if library == OURS else [])
        for criterion in [c for c in names if criteria is None or c in criteria]:
            for compensation in (COMPENSATIONS if library == OURS else ["none"]):
                if compensations is not None and compensation not in compensations:
                    continue
                for ratio in ratios:
                    for seed in range(random_seeds if criterion == "random" else 1):
                        rows.append({"section": section, "library": library, "criterion": criterion,
                                     "compensation": compensation, "ratio": ratio, "seed": seed})
    return rows


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


def run_row(section: Any, row: Row) -> Row:
    """Prune a fresh dense copy as ``row`` says and measure it; never raises."""
    torch.manual_seed(row["seed"])
    model = section.fresh_model()
    before = models.count_params(model)
    start = time.time()
    try:
        row = section.prepare_row(row)
        pruner = PRUNERS[row["library"]](section, model, row)
    except NotAvailable as error:
        return {**row, "status": "n/a", "message": " ".join(str(error).split())}
    except Exception as error:  # report every failure as a row: the table must show it
        traceback.print_exc(file=sys.stderr)
        return {**row, "status": "error", "message": _short(error), "seconds": time.time() - start}
    prune_s = time.time() - start
    model.eval()
    try:
        metrics = section.evaluate(model)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return {**row, "status": "error", "message": "pruned model failed: " + _short(error)}
    return {**row, "status": "ok", "params_before": before, "params_after": models.count_params(model),
            "pruning_ratio": float(getattr(pruner, "pruning_ratio", row["ratio"])), "prune_s": prune_s,
            "seconds": time.time() - start, **metrics}


def run_in_process(section: Any, rows: List[Row], on_row: Callable[[Row], None]) -> List[Row]:
    results = []
    for row in rows:
        result = run_row(section, row)
        results.append(result)
        on_row(result)
    return results


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the worker's own process group, started below
    except ProcessLookupError:
        pass
    process.wait()


def _tail(path: str, lines: int = 3) -> str:
    with open(path, errors="replace") as handle:
        text = [line.strip() for line in handle.read().splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-400:]


def run_in_worker(script: str, section_name: str, bundle_path: str, rows: List[Row], timeout: float,
                  on_row: Callable[[Row], None]) -> List[Row]:
    """Run ``rows`` in worker processes; a row over ``timeout`` seconds is killed and recorded."""
    pending, results = list(rows), []
    while pending:
        with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as errors:
            log_path = errors.name
        with open(log_path, "w") as stderr:
            process = subprocess.Popen([sys.executable, script, "--worker", section_name, bundle_path],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                       start_new_session=True)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(pending))
        process.stdin.close()
        deadline = time.time() + timeout
        while pending:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                _kill(process)
                result = {**pending.pop(0), "status": "timeout",
                          "message": f"no result after {timeout:.0f} s; last output: {_tail(log_path)}"}
                results.append(result)
                on_row(result)
                break
            line = process.stdout.readline()
            if not line:
                code = process.wait()
                result = {**pending.pop(0), "status": "error",
                          "message": f"worker exited with status {code}: {_tail(log_path)}"}
                results.append(result)
                on_row(result)
                break
            if line.startswith("ROW "):
                result = json.loads(line[4:])
                pending.pop(0)
                results.append(result)
                on_row(result)
                deadline = time.time() + timeout
        else:
            process.wait()
        os.unlink(log_path)
    return results


def worker_main(section: Any) -> None:
    """Worker side: rows as JSON on stdin, one ``ROW`` line per result on stdout."""
    rows = json.loads(sys.stdin.read())
    for row in rows:
        print("ROW " + json.dumps(run_row(section, row)), flush=True)
