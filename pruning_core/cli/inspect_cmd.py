"""``pruning-core inspect``: the dependency groups of a model, readable (or as JSON)."""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any, Dict, List

from .sources import resolve


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="show a model's dependency groups",
                            description="List every group of coupled channels the pruner would use, with its "
                                        "size and members, and why the other channels stay.")
    parser.add_argument("model", help="a model spec, as for prune")
    parser.add_argument("--input-shape", default=None, help="example input shape, for example 1,3,224,224")
    parser.add_argument("--members", action="store_true", help="list every member of every group")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def describe(source: Any) -> Dict[str, Any]:
    from ..pruner import BasePruner

    pruner = BasePruner(source.model.eval(), source.example_inputs, importance="random",
                        ignored_layers=list(source.keep), forward_fn=source.forward_fn)
    groups: List[Dict[str, Any]] = []
    for planned in pruner.groups:
        group = pruner.full_group(planned)
        members = [{"name": item.dep.target.qualname, "kind": item.dep.slot.kind,
                    "function": item.dep.handler.__name__, "positions": len(item.idxs)} for item in group]
        groups.append({"root": planned.root.describe(), "root_kind": planned.root.kind,
                       "channels": planned.current, "positions_per_channel": planned.positions_per_channel,
                       "heads": planned.is_head, "members": members})
    reasons: Dict[str, int] = collections.Counter()
    for notes in pruner.DG.frozen_reasons().values():
        for note in notes[:1]:
            reasons[note] += 1
    unsupported = collections.Counter(op.op for op in pruner.DG.unsupported_ops)
    return {"model": source.spec, "description": source.description, "groups": groups,
            "prunable_channels": sum(g["channels"] for g in groups),
            "kept_reasons": dict(reasons.most_common()), "unsupported_ops": dict(unsupported)}


def run(args: argparse.Namespace) -> int:
    source = resolve(args.model, args.input_shape)
    info = describe(source)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']} ({info['description']}): {len(info['groups'])} groups, "
          f"{info['prunable_channels']} prunable channels")
    for group in info["groups"]:
        head = " heads" if group["heads"] else ""
        per = f" x{group['positions_per_channel']}" if group["positions_per_channel"] > 1 else ""
        print(f"  {group['root']:<44} {group['channels']:>6}{per}{head} channels, {len(group['members'])} members")
        if args.members:
            for member in group["members"]:
                print(f"      {member['function']:<20} {member['name']} ({member['positions']})")
    if info["kept_reasons"]:
        print("channels kept, by reason (slots):")
        for reason, count in list(info["kept_reasons"].items())[:12]:
            print(f"  {count:>5}  {reason}")
    if info["unsupported_ops"]:
        print("operators without a rule (their channels are kept): " +
              ", ".join(f"{op} x{n}" for op, n in info["unsupported_ops"].items()))
    return 0
