"""The prune command's report, as a dict (for ``--json``) and as text."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def _changed(before: Dict[str, Any], after: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for name, (kind, n_in, n_out) in before.items():
        if name not in after:
            continue
        _, m_in, m_out = after[name]
        if (n_in, n_out) != (m_in, m_out):
            rows.append({"name": name or "<model>", "type": kind, "in": [n_in, m_in], "out": [n_out, m_out]})
    return rows


def build(args: Any, source: Any, before: Dict[str, Any], after: Dict[str, Any], widths_before: Dict[str, Any],
          widths_after: Dict[str, Any], saved: Dict[str, Any], check: Dict[str, Any], kept: List[str], pruner: Any,
          latency: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {
        "model": source.spec,
        "description": source.description,
        "ratio": args.ratio,
        "importance": args.importance,
        "global_pruning": args.global_pruning,
        "iterative_steps": args.iterative_steps,
        "before": before,
        "after": after,
        "params_ratio": after["params"] / max(1, before["params"]),
        "macs_ratio": after["macs"] / max(1, before["macs"]),
        "kept": kept,
        "changed_layers": _changed(widths_before, widths_after),
        "groups_pruned": len(pruner.groups),
        "output": saved["path"],
        "saved": saved,
        "reload_check": check,
        "latency": latency,
    }


def _num(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def render(result: Dict[str, Any]) -> str:
    before, after = result["before"], result["after"]
    lines = [f"pruned {result['model']} ({result['description']})",
             f"  criterion {result['importance']}, ratio {result['ratio']}"
             f"{', global' if result['global_pruning'] else ''}, {result['iterative_steps']} step(s), "
             f"{result['groups_pruned']} groups"]
    lines.append(f"  params   {_num(before['params']):>9} -> {_num(after['params']):>9}  "
                 f"({result['params_ratio']:.1%} kept)")
    lines.append(f"  MACs     {_num(before['macs']):>9} -> {_num(after['macs']):>9}  ({result['macs_ratio']:.1%} kept)")
    if result.get("latency"):
        lines.extend(_latency_lines(result["latency"]))
    if result["kept"]:
        lines.append(f"  kept     {', '.join(result['kept'][:6])}{' ...' if len(result['kept']) > 6 else ''}")
    changed = result["changed_layers"]
    lines.append(f"  changed layers: {len(changed)}")
    for row in changed[:40]:
        lines.append(f"    {row['name']:<40} {row['type']:<18} in {row['in'][0]}->{row['in'][1]}  "
                     f"out {row['out'][0]}->{row['out'][1]}")
    if len(changed) > 40:
        lines.append(f"    ... {len(changed) - 40} more (--json lists all)")
    check = result["reload_check"]
    status = "identical outputs" if check["ok"] else f"MISMATCH (max abs diff {check['max_abs_diff']})"
    saved = result["saved"]
    if saved["format"] == "transformers":
        path = saved["path"]
        how = (f"transformers' {saved['architecture']}.from_pretrained({path!r}) loads it" if saved["stock_loadable"]
               else f"{saved.get('reason') or 'its config cannot describe it'}, so load it with "
                    f"pruning_core_hf.from_pretrained({path!r})")
        copied = f"; copied {', '.join(saved['copied'])}" if saved["copied"] else ""
        lines.append(f"  saved to {path} (transformers directory: {how}{copied})")
        lines.append(f"  reloaded: {status}")
    else:
        lines.append(f"  saved to {saved['path']}; reloaded with weights_only=True: {status}")
    return "\n".join(lines)


def _latency_lines(latency: Dict[str, Any]) -> List[str]:
    """Median wall and CPU time per call, the paired ratio with its spread, and whether it says anything."""
    a, b = latency["original"], latency["pruned"]
    if not latency["rounds"]:
        return [f"  latency  not measured: one warm-up call of each model took {latency['warmup_s']:.1f} s, which "
                "leaves no time for a round within --latency-budget; raise it"]
    setup = f"{latency['rounds']} interleaved rounds, {latency['threads']} thread(s), {latency['seconds']:.1f} s"
    lines = [f"  latency  {a['wall_ms']:>7.2f}ms -> {b['wall_ms']:>7.2f}ms wall, {a['cpu_ms']:.2f}ms -> "
             f"{b['cpu_ms']:.2f}ms CPU time (medians of {setup})"]
    verdicts = []
    for kind, title in (("wall", "wall"), ("cpu", "CPU")):
        if f"{kind}_ratio" not in latency:
            continue
        low, high = latency[f"{kind}_ratio_iqr"]
        verdict = latency[f"{kind}_verdict"]
        words = {"faster": "faster", "slower": "slower",
                 "inconclusive": "spread too wide to conclude"}[verdict]
        verdicts.append(f"{title} {latency[f'{kind}_ratio']:.2f}x ({low:.2f}-{high:.2f}): {words}")
    lines.append("           pruned/original per round, median (interquartile range): " + "; ".join(verdicts))
    if "inconclusive" in (latency.get("wall_verdict"), latency.get("cpu_verdict")):
        lines.append("           (a busy machine or too few rounds; a larger --latency-budget gives more rounds)")
    return lines
