"""``pruning-core inspect``: a model's groups of coupled channels, and why the other channels are kept."""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any, Dict, List, Tuple

from .sources import check_runs, resolve

_SIDES = {"out": "output channels", "in": "input channels"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="show a model's groups of coupled channels and why others are kept",
                            description="List every group of coupled channels the pruner would use (the layer it "
                                        "is rooted at, its channels and the layers that lose them together), then "
                                        "every layer whose channels are kept, with the reason.")
    parser.add_argument("model", help="a model spec, as for prune")
    parser.add_argument("--input-shape", default=None, help="example input shape, for example 1,3,224,224")
    parser.add_argument("--layers", "--members", dest="layers", action="store_true",
                        help="list every layer of every group")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def plain_reason(note: str) -> str:
    """A frozen-channel note in the README's words."""
    if note == "model output":
        return "the model's output (its shape stays, so a classifier keeps its classes)"
    if note == "model input":
        return "the model's input"
    if note.endswith(": number of groups"):
        return (f"split into heads or equal groups by {note[:-len(': number of groups')]} (heads are pruned only "
                "when a hint says how: num_heads=..., or a plugin)")
    if note.endswith(": whole heads are kept"):
        return f"{note} (heads are removed only with prune_num_heads=True and a head_pruning_ratio)"
    for prefix in ("pruning it broke the model: ", "trial pruning failed: "):
        if note.startswith(prefix):
            return f"removing them broke the model's forward ({note[len(prefix):]})"
    return note


def layer_label(key: str) -> str:
    """``"fc [out]"`` -> ``"fc (output channels)"``; ``"pos (dim 1) [param]"`` -> ``"pos (dim 1)"``."""
    name, _, side = key.rpartition(" [")
    side = side.rstrip("]")
    return f"{name} ({_SIDES[side]})" if side in _SIDES else name


def kept_channels(pruner: Any, keep: Any) -> List[Dict[str, Any]]:
    """Kept channel sets grouped by reason: ``[{"reason", "note", "layers"}]``, most layers first."""
    by_note: Dict[str, List[str]] = collections.defaultdict(list)
    for key, notes in pruner.DG.frozen_reasons().items():
        if notes:
            by_note[notes[0]].append(layer_label(key))
    names = {id(m): n for n, m in pruner.model.named_modules()}
    requested = [f"{names[id(m)] or '<model>'} (output channels)" for m in keep if id(m) in names]
    rows = [{"reason": plain_reason(note), "note": note, "layers": layers} for note, layers in by_note.items()]
    if requested:
        rows.append({"reason": "kept on request (ignored layers, or a plugin's hint such as an LM head)",
                     "note": "ignored", "layers": requested})
    return sorted(rows, key=lambda row: -len(row["layers"]))


def describe(source: Any) -> Dict[str, Any]:
    from ..pruner import BasePruner

    pruner = BasePruner(source.model.eval(), source.example_inputs, importance="random",
                        ignored_layers=list(source.keep), forward_fn=source.forward_fn)
    groups: List[Dict[str, Any]] = []
    for planned in pruner.groups:
        group = pruner.full_group(planned)
        layers: List[Tuple[str, str]] = []
        for item in group:
            side = "output channels" if pruner.DG.is_out_channel_pruning_fn(item.dep.handler) else "input channels"
            entry = (item.dep.target.qualname, side)
            if entry not in layers:
                layers.append(entry)
        groups.append({"root": planned.root.describe(), "channels": planned.current,
                       "positions_per_channel": planned.positions_per_channel, "heads": planned.is_head,
                       "layers": [{"name": name, "loses": side} for name, side in layers]})
    reasons: Dict[str, int] = collections.Counter()
    for notes in pruner.DG.frozen_reasons().values():
        for note in notes[:1]:
            reasons[note] += 1
    unsupported = collections.Counter(op.op for op in pruner.DG.unsupported_ops)
    return {"model": source.spec, "description": source.description, "groups": groups,
            "prunable_channels": sum(g["channels"] for g in groups), "kept": kept_channels(pruner, source.keep),
            "kept_reasons": dict(reasons.most_common()), "unsupported_ops": dict(unsupported)}


def run(args: argparse.Namespace) -> int:
    source = resolve(args.model, args.input_shape)
    check_runs(source, from_shape=bool(args.input_shape))
    info = describe(source)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']} ({info['description']}): {len(info['groups'])} groups of coupled channels, "
          f"{info['prunable_channels']} channels that can be pruned")
    for group in info["groups"]:
        head = " heads" if group["heads"] else ""
        per = f" x{group['positions_per_channel']}" if group["positions_per_channel"] > 1 else ""
        layers = len({layer["name"] for layer in group["layers"]})
        print(f"  {group['root']:<44} {group['channels']:>6}{per}{head} channels, {layers} layers")
        if args.layers:
            for layer in group["layers"]:
                print(f"      {layer['name']:<44} {layer['loses']}")
    if info["kept"]:
        print("channels kept, by reason:")
        for row in info["kept"][:12]:
            names = row["layers"]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            print(f"  {row['reason']}:\n      {shown}")
    if info["unsupported_ops"]:
        print("operators without a rule (their channels are kept): " +
              ", ".join(f"{op} x{n}" for op, n in info["unsupported_ops"].items()))
    return 0
