"""Prune a LLaMA-2-7B-shaped checkpoint larger than a quarter of this machine's memory, streaming (issue 14).

``make bench-llm`` runs every phase in its own process and measures its peak RSS
(the kernel's high-water mark, ``VmHWM``), killing a phase that passes
``--rss-limit`` or ``--time-limit``:

1. ``generate``: random bf16 weights in 5 GB safetensors shards, written tensor by
   tensor into a temporary directory (deleted at the end).
2. ``stream``: ``pruning_core_hf.prune_checkpoint`` removes 30% of every FFN and
   half of the attention heads, with ``wanda`` scores from 32 sequences of 128 tokens.
3. ``load``: stock ``AutoModelForCausalLM.from_pretrained`` loads the output and generates.
4. ``memory``: the in-memory path on the same task (``from_pretrained``, then
   ``BasePruner(...).step()``), for its peak RSS.
5. ``tp``: Torch-Pruning 1.6.1 on the same task, on meta and in memory.

Half the heads, not 30%: transformers 5 refuses a Llama config whose hidden size
is not a multiple of the head count, and 16 is the nearest count below 32 that
divides 4096, so the output stays loadable with stock ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import run_info  # benchmarks/, beside this script

SHAPES = {  # LLaMA-2-7B; "small" is for trying the script in a minute
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32000),
}
FFN_RATIO, HEAD_RATIO = 0.3, 0.5
SEQUENCES, TOKENS = 32, 128


def _config(shape: str) -> Any:
    import transformers

    return transformers.LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-5,
                                    tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])


def _calibration() -> Any:
    import torch

    return torch.randint(0, 32000, (SEQUENCES, TOKENS), generator=torch.Generator().manual_seed(0))


def _task() -> Dict[str, Any]:
    return dict(pruning_ratio=FFN_RATIO, prune_num_heads=True, head_pruning_ratio=HEAD_RATIO)


# -- phases (each in its own process) ------------------------------------------------------------------
def phase_generate(src: str, shape: str, shard_gb: float) -> Dict[str, Any]:
    import torch
    import transformers
    from safetensors.torch import save_file

    config = _config(shape)
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    os.makedirs(src, exist_ok=True)
    config.save_pretrained(src)
    generator = torch.Generator().manual_seed(0)
    names = list(skeleton.state_dict().items())
    shards: List[Dict[str, Any]] = [{}]
    sizes = [0]
    for name, meta in names:
        nbytes = meta.numel() * 2
        if sizes[-1] and sizes[-1] + nbytes > shard_gb * 1e9:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tuple(meta.shape)
        sizes[-1] += nbytes
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, 1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape_ in shard.items():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                tensors[name] = torch.ones(shape_, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shape_, generator=generator) * 0.02).to(torch.bfloat16)
        save_file(tensors, os.path.join(src, filename), metadata={"format": "pt"})
        for name in shard:
            weight_map[name] = filename
        total += sum(t.numel() * 2 for t in tensors.values())
        del tensors
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle)
    return {"bytes": total, "shards": len(shards)}


def phase_stream(src: str, dst: str) -> Dict[str, Any]:
    import pruning_core_hf.streaming as streaming

    start = time.perf_counter()
    result = streaming.prune_checkpoint(src, dst, ratio=FFN_RATIO, head_ratio=HEAD_RATIO, importance="wanda",
                                        calibration=_calibration(), batch_size=8)
    return {"wall_s": time.perf_counter() - start, "form": result.form, "output_bytes": result.output_bytes,
            "input_bytes": result.input_bytes}


def phase_load(dst: str) -> Dict[str, Any]:
    import torch
    import transformers

    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16).eval()
    prompt = torch.tensor([[1, 450, 4996, 17354, 1701, 432]])
    out = model.generate(prompt, max_new_tokens=8, do_sample=False)
    return {"wall_s": time.perf_counter() - start, "generated": out.shape[1] - prompt.shape[1],
            "heads": model.config.num_attention_heads, "ffn": model.config.intermediate_size,
            "params": sum(p.numel() for p in model.parameters())}


def phase_memory(src: str) -> Dict[str, Any]:
    import torch
    import transformers

    import pruning_core as tp

    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
    loaded = time.perf_counter() - start
    blocks = {id(m) for layer in model.model.layers for m in layer.modules()}
    outside = [m for m in model.modules() if id(m) not in blocks and not list(m.children())]
    batches = [{"input_ids": b, "use_cache": False} for b in _calibration().split(8)]
    # One calibration pass (sequential=False): sequential calibration in memory reruns every earlier block
    # for each block, 528 block passes for 32 blocks, which would not fit the time limit here.
    pruner = tp.pruner.BasePruner(model, {"input_ids": batches[0]["input_ids"][:1], "use_cache": False},
                                  importance="wanda", ignored_layers=outside, calibration=batches, sequential=False,
                                  **_task())
    pruner.step()
    return {"wall_s": time.perf_counter() - start, "load_s": loaded}


def phase_tp(src: str, where: str) -> Dict[str, Any]:
    import torch
    import transformers
    import torch_pruning

    if where == "meta":
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(_config_from(src))
        inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta"),  # a 4-D mask: no .item() on meta
                  "attention_mask": torch.zeros(1, 1, 8, 8, device="meta")}
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
        inputs = torch.randint(0, 32000, (1, 8))
    model.config.use_cache = False  # its LLM recipe: no key/value cache in the traced outputs
    start = time.perf_counter()
    pruner = torch_pruning.pruner.MetaPruner(model, inputs, importance=torch_pruning.importance.MagnitudeImportance(p=2),
                                             pruning_ratio=FFN_RATIO, ignored_layers=[model.lm_head],
                                             output_transform=lambda out: out.logits)
    pruner.step()
    return {"wall_s": time.perf_counter() - start}


def _config_from(src: str) -> Any:
    import transformers

    return transformers.AutoConfig.from_pretrained(src)


# -- the driver ------------------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_phase(args: List[str], rss_limit_gb: float, time_limit: float) -> Dict[str, Any]:
    """Run one phase in a child process; its peak RSS, wall time and result (or how it failed)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--phase"] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    killed: List[str] = []

    def watch() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], _status_kb(child.pid, "VmHWM"))
            if _status_kb(child.pid, "VmRSS") > rss_limit_gb * 2 ** 20 and not killed:
                killed.append(f"killed at the {rss_limit_gb:g} GiB RSS limit")
                child.kill()
            if time.perf_counter() - start > time_limit and not killed:
                killed.append(f"killed at the {time_limit:g} s time limit")
                child.kill()
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = child.communicate()
    watcher.join()
    result: Dict[str, Any] = {"seconds": time.perf_counter() - start}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if child.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
        result["peak_rss"] = result.pop("own_peak_rss", 0)
    else:
        errors = [line for line in stderr.strip().splitlines() if line.strip()]
        result["error"] = killed[0] if killed else (errors[-1] if errors else f"exit code {child.returncode}")
        result["peak_rss"] = peak[0] * 1024
    result["peak_rss"] = max(result["peak_rss"], peak[0] * 1024)
    print(json.dumps({"phase": args[0], **result}), file=sys.stderr, flush=True)
    return result


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _gib(value: Optional[float]) -> str:
    return f"{value / 2 ** 30:.2f} GiB" if value else "-"


def render(shape: str, rows: Dict[str, Dict[str, Any]], src_bytes: int, out_bytes: int, args: Any) -> str:
    import torch

    def outcome(row: Dict[str, Any]) -> str:
        return f"failed: {row['error'][:160]}" if "error" in row else "ok"

    stream, load = rows["stream"], rows["load"]
    lines = [
        f"# Streaming pruning of a LLaMA-2-{shape.upper()}-shaped checkpoint (issue 14)", "",
        f"Command: `make bench-llm` (`python benchmarks/bench_llm.py --shape {shape} --output ...`), "
        f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB RAM.",
        "",
        f"Task: remove {FFN_RATIO:.0%} of every FFN and {HEAD_RATIO:.0%} of the attention heads (see the script's "
        f"docstring for why half), `wanda` scores from {SEQUENCES} sequences of {TOKENS} random tokens; random bf16 "
        f"weights, {src_bytes / 1e9:.1f} GB in {rows['generate'].get('shards', '?')} safetensors shards. Each phase "
        "runs in its own process; peak RSS is the kernel's high-water mark (VmHWM) of that process, imports included. "
        f"Phases are stopped at {args.rss_limit:g} GiB RSS or {args.time_limit:g} s. One run of each.",
        "",
        "| phase | result | wall time | peak RSS | notes |",
        "|---|---|---:|---:|---|",
        f"| pruning_core streaming (`prune_checkpoint`) | {outcome(stream)} | {stream['seconds']:.0f} s | "
        f"{_gib(stream['peak_rss'])} | output {out_bytes / 1e9:.2f} GB on disk, form `{stream.get('form', '-')}` |",
        f"| stock `from_pretrained` of the output + `generate` | {outcome(load)} | {load['seconds']:.0f} s | "
        f"{_gib(load['peak_rss'])} | {load.get('generated', 0)} tokens generated; {load.get('heads', '?')} heads, "
        f"FFN {load.get('ffn', '?')}, {load.get('params', 0) / 1e9:.2f} B parameters |",
        f"| pruning_core in memory (`from_pretrained` + `BasePruner.step()`) | {outcome(rows['memory'])} | "
        f"{rows['memory']['seconds']:.0f} s | {_gib(rows['memory']['peak_rss'])} | same criterion and data, one "
        "calibration pass (`sequential=False`) |",
        f"| Torch-Pruning 1.6.1 on meta | {outcome(rows['tp_meta'])} | {rows['tp_meta']['seconds']:.0f} s | "
        f"{_gib(rows['tp_meta']['peak_rss'])} | `MetaPruner`, magnitude (it has no calibrated criterion) |",
        f"| Torch-Pruning 1.6.1 in memory | {outcome(rows['tp_memory'])} | {rows['tp_memory']['seconds']:.0f} s | "
        f"{_gib(rows['tp_memory']['peak_rss'])} | `MetaPruner`, magnitude, 30% of every width including the hidden "
        "size (only `lm_head` kept), after `from_pretrained` |",
        "",
        f"Streaming peak RSS / checkpoint size: {stream['peak_rss'] / max(src_bytes, 1):.2f}. "
        f"Target: at most 3 GB and the output loads with stock `from_pretrained`: "
        f"{'met' if stream['peak_rss'] <= 3e9 and 'error' not in load and load.get('generated') else 'NOT met'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: a temp dir)")
    parser.add_argument("--rss-limit", type=float, default=20.0, help="GiB; a phase above it is killed")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per phase")
    parser.add_argument("--output", help="write the markdown table here")
    args = parser.parse_args()
    if args.phase:
        name, rest = args.phase[0], args.phase[1:]
        functions = {"generate": lambda: phase_generate(rest[0], rest[1], float(rest[2])),
                     "stream": lambda: phase_stream(rest[0], rest[1]), "load": lambda: phase_load(rest[0]),
                     "memory": lambda: phase_memory(rest[0]), "tp": lambda: phase_tp(rest[0], rest[1])}
        out = functions[name]()
        import resource

        out["own_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(out), flush=True)
        return
    work = tempfile.mkdtemp(prefix="bench-llm-", dir=args.workdir)
    src, dst = os.path.join(work, "src"), os.path.join(work, "pruned")
    limits = (args.rss_limit, args.time_limit)
    try:
        rows = {"generate": run_phase(["generate", src, args.shape, "5"], *limits)}
        src_bytes = _du(src)
        rows["stream"] = run_phase(["stream", src, dst], *limits)
        out_bytes = _du(dst) if os.path.isdir(dst) else 0
        rows["load"] = run_phase(["load", dst], *limits)
        rows["memory"] = run_phase(["memory", src], *limits)
        rows["tp_meta"] = run_phase(["tp", src, "meta"], *limits)
        rows["tp_memory"] = run_phase(["tp", src, "memory"], args.rss_limit, min(args.time_limit, 600.0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(args.shape, rows, src_bytes, out_bytes, args)
    run_info.publish(table, args.output)


if __name__ == "__main__":
    main()
