"""Run a function on N local ranks (gloo, CPU) from a test, with a timeout instead of a hang.

::

    from pruning_core.testing.distributed import run_ranks

    def scenario(rank, world_size, arg):        # module level: it is pickled by reference
        ...                                      # torch.distributed is initialized here
        return something_picklable

    results = run_ranks(scenario, "arg", world_size=2, timeout=60)   # [result of rank 0, of rank 1]

An exception on any rank is re-raised in the caller as :class:`RankFailure` carrying each
rank's exception type and message (``failure.errors[rank]``); a rank still running after
``timeout`` seconds is killed and reported the same way.
"""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.util
import os
import pickle
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import PruningError


class RankFailure(PruningError):
    """One or more ranks raised or timed out; ``errors`` maps rank -> (exception type name, message)."""

    def __init__(self, message: str, errors: Dict[int, Tuple[str, str]], results: List[Any]) -> None:
        super().__init__(message)
        self.errors = errors
        self.results = results


def _where(fn: Callable[..., Any]) -> Tuple[str, Optional[str], str]:
    """How a child process finds ``fn``: its module's name and file, and its qualified name."""
    module = sys.modules.get(fn.__module__)
    return fn.__module__, getattr(module, "__file__", None), fn.__qualname__


def _load(where: Tuple[str, Optional[str], str]) -> Callable[..., Any]:
    """``fn`` in a child: imported by name, or from its file (pytest's importlib mode keeps tests off sys.path)."""
    name, path, qualname = where
    try:
        module: Any = importlib.import_module(name)
    except ImportError:
        if path is None:
            raise
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    for part in qualname.split("."):
        module = getattr(module, part)
    return module


def _entry(rank: int, world_size: int, init_file: str, out_dir: str, where: Tuple[str, Optional[str], str],
           args: Tuple[Any, ...], threads: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    path = os.path.join(out_dir, f"rank{rank}.pkl")
    started = False
    try:
        fn = _load(where)
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        started = True
        value: Any = ("ok", fn(rank, world_size, *args))
    except BaseException as exc:  # reported to the parent, which re-raises
        value = ("error", (type(exc).__name__, str(exc), traceback.format_exc()))
    with open(path + ".tmp", "wb") as handle:  # the result first: a crash while tearing down cannot lose it
        pickle.dump(value, handle)
    os.replace(path + ".tmp", path)
    if started:
        gc.collect()  # wrappers the function made (DDP's reducer) go before the process group does
        try:  # no rank tears the group down while another still uses it
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
        finally:
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 60.0,
              threads: int = 1) -> List[Any]:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; their return values, by rank.

    ``fn`` must be a module-level function (a test module's is fine: children load it from its file).

    Raises :class:`RankFailure` if any rank raised (or was still running after ``timeout``
    seconds, then killed); ``failure.results`` holds what the other ranks returned, or None.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pruning_core_ranks_") as folder:
        init_file = os.path.join(folder, "init")
        where = _where(fn)
        processes = [context.Process(target=_entry, daemon=True,
                                     args=(rank, world_size, init_file, folder, where, args, threads))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        paths = [os.path.join(folder, f"rank{rank}.pkl") for rank in range(world_size)]
        while time.monotonic() < deadline and any(p.is_alive() for p in processes):
            if all(os.path.exists(path) for path in paths):  # every result is in: allow time to tear down
                deadline = min(deadline, time.monotonic() + 10)
            time.sleep(0.05)
        results: List[Any] = [None] * world_size
        errors: Dict[int, Tuple[str, str]] = {}
        for rank, process in enumerate(processes):
            if process.is_alive():
                process.kill()
                process.join(5)
            status: Optional[Tuple[str, Any]] = None
            if os.path.exists(paths[rank]):
                with open(paths[rank], "rb") as handle:
                    status = pickle.load(handle)
            if status is None:
                errors[rank] = ("TimeoutError", f"still running after {timeout} s; killed") if \
                    process.exitcode == -9 else ("ProcessError", f"exited with code {process.exitcode} and no result")
            elif status[0] == "ok":
                results[rank] = status[1]
            else:
                errors[rank] = (status[1][0], status[1][1] + "\n" + status[1][2])
    if errors:
        detail = "; ".join(f"rank {rank}: {kind}: {message[:2000]}" for rank, (kind, message) in sorted(errors.items()))
        raise RankFailure(f"{len(errors)} of {world_size} ranks failed: {detail}", errors, results)
    return results


__all__ = ["run_ranks", "RankFailure"]
