"""Random architectures through pruning_core and torch-pruning 1.6.1: how often does pruning break a model?

For each random model (pruning_core.testing.architectures), both libraries build
their graph, prune a random subset of one random group, then the model must run
forward and backward with its output shape unchanged. For pruning_core, on
architectures where pruning equals zeroing the removed channels, the outputs
must also match that oracle. Run with ``make fuzz``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import random
import signal
import sys
import time
from typing import Callable, Dict

import torch

import run_info
from pruning_core.testing import architectures


class Timeout(Exception):
    pass


class ShapeChanged(Exception):
    """The pruned model ran but its output shape differs."""


def _alarm(signum, frame):
    raise Timeout()


def _run_with_timeout(fn: Callable[[], str], seconds: int) -> str:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        return fn()
    except Timeout:
        return "timeout"
    finally:
        signal.alarm(0)


def _check(model, x, reference_shape) -> None:
    model.train()
    out = model(x)
    if out.shape != reference_shape:
        raise ShapeChanged(f"output shape {tuple(out.shape)} != {tuple(reference_shape)}")
    out.square().mean().backward()


def ours(spec, seed: int) -> str:
    import pruning_core as tp

    model, x = architectures.build(spec, seed)
    reference = model(x)
    zeroed = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = list(DG.get_all_groups())
    if not groups:
        return "no prunable group"
    rng = random.Random(seed)
    index = rng.randrange(len(groups))
    group = groups[index]
    channels = sorted(rng.sample(range(group.num_channels), rng.randint(1, group.num_channels - 1)))
    chosen = group.channel_group(channels)
    chosen.prune()
    if architectures.oracle_safe(spec):
        dg_zero = tp.DependencyGraph().build_dependency(zeroed, x)
        list(dg_zero.get_all_groups())[index].channel_group(channels).soft_prune()
        with torch.no_grad():
            if not torch.allclose(model.eval()(x), zeroed.eval()(x), atol=1e-4, rtol=1e-4):
                return "wrong outputs (oracle)"
    _check(model, x, reference.shape)
    return "ok"


def incumbent(spec, seed: int) -> str:
    import torch_pruning as tpi

    model, x = architectures.build(spec, seed)
    reference = model(x)
    DG = tpi.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(DG.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d]))
    groups = [g for g in groups if len(g[0][1]) > 1 and not (g[0][0].target.module is model.blocks[-1].fc)]
    if not groups:
        return "no prunable group"
    rng = random.Random(seed)
    group = groups[rng.randrange(len(groups))]
    n = len(group[0][1])
    idxs = sorted(rng.sample(range(n), rng.randint(1, n - 1)))
    group.prune(idxs=idxs)
    _check(model, x, reference.shape)
    return "ok"


def outcome(fn, spec, seed, timeout) -> str:
    def attempt() -> str:
        try:
            return fn(spec, seed)
        except ShapeChanged:
            return "output shape changed"
        except Exception as exc:  # any crash is a failure to record
            return f"crash: {type(exc).__name__}"
    return _run_with_timeout(attempt, timeout)


LABELS = {"pruning_core": "pruning_core", "torch_pruning": "torch-pruning 1.6.1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=20, help="seconds per model and library")
    parser.add_argument("--output", help="write the markdown table here")
    parser.add_argument("--skip-incumbent", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts: Dict[str, collections.Counter] = {"pruning_core": collections.Counter(), "torch_pruning": collections.Counter()}
    failures: Dict[str, list] = {"pruning_core": [], "torch_pruning": []}
    start = time.time()
    for i in range(args.examples):
        seed = args.seed + i
        spec = architectures.random_spec(random.Random(seed), allow_unsafe=(i % 2 == 1))
        for name, fn in (("pruning_core", ours), ("torch_pruning", incumbent)):
            if name == "torch_pruning" and args.skip_incumbent:
                continue
            result = outcome(fn, spec, seed, args.timeout)
            counts[name][result] += 1
            if result not in ("ok", "no prunable group") and len(failures[name]) < 10:
                failures[name].append((seed, [b["kind"] for b in spec], result))
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{args.examples} {dict(counts['pruning_core'])} | {dict(counts['torch_pruning'])}",
                  file=sys.stderr)
    elapsed = time.time() - start
    libraries = ["pruning_core"] + ([] if args.skip_incumbent else ["torch_pruning"])
    command = f"python benchmarks/fuzz.py --examples {args.examples} --seed {args.seed}"
    lines = ["# Random-architecture fuzzing: " + ("pruning_core" if args.skip_incumbent else
                                                  "pruning_core vs torch-pruning 1.6.1"), "",
             (f"Command: `{command} --skip-incumbent`, " if args.skip_incumbent else
              f"Command: `{command}` (`make fuzz`), ") +
             f"{time.strftime('%Y-%m-%d')}, pruning_core at {run_info.commit()}, {elapsed / 60:.1f} minutes.", "",
             "Each example is a random model from `pruning_core.testing.architectures` (half of them only with "
             "blocks where pruning equals zeroing the removed channels, checked against that oracle for "
             "pruning_core). Each library prunes a random subset of one random group; the model must then run "
             "forward and backward with an unchanged output shape.", "",
             "| outcome | " + " | ".join(LABELS[name] for name in libraries) + " |",
             "|---|" + "---:|" * len(libraries)]
    outcomes = sorted(set(counts["pruning_core"]) | set(counts["torch_pruning"]),
                      key=lambda o: (o != "ok", o != "no prunable group", o))
    for result in outcomes:
        lines.append(f"| {result} | " + " | ".join(str(counts[name][result]) for name in libraries) + " |")
    for name in counts:
        total = sum(counts[name].values())
        tried = total - counts[name]["no prunable group"]
        failed = tried - counts[name]["ok"]
        if total:
            lines.append("")
            lines.append(f"{name}: {failed} failures in {tried} pruned models ({100 * failed / max(1, tried):.1f}%).")
        for seed, kinds, result in failures[name]:
            lines.append(f"- {name} seed {seed}: {result}; blocks {kinds}")
    text = "\n".join(lines) + "\n"
    run_info.publish(text, args.output)


if __name__ == "__main__":
    main()
