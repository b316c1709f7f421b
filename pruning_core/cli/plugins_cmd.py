"""``pruning-core plugins``: every plugin with its distribution, hooks and load error."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plugins", help="list installed plugins, their hooks and load errors")
    parser.add_argument("--all", action="store_true", help="include the built-in plugins")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._plugins import get_hub

    hub = get_hub()
    infos = sorted(hub.infos.values(), key=lambda i: (not i.builtin, i.name))
    builtin_count = sum(1 for i in infos if i.builtin)
    if not args.all:
        infos = [i for i in infos if not i.builtin]
    conflicts = hub.conflicts()
    failed = any(i.error for i in infos) or bool(conflicts)
    if args.json:
        print(json.dumps({"plugins": [i.as_dict() for i in infos], "conflicts": conflicts}, indent=2))
        return 1 if failed else 0
    if not args.all:
        print(f"{builtin_count} built-in plugins loaded (--all lists them)")
    if not infos:
        print("no external plugins installed")
    for info in infos:
        origin = "built-in" if info.builtin else f"{info.distribution or '?'} {info.version or ''}".strip()
        status = f"ERROR: {info.error}" if info.error else ", ".join(info.hooks) or "no hooks"
        print(f"{info.name:<28} {origin:<26} {status}")
    for line in conflicts:
        print(f"CONFLICT: {line}")
    return 1 if failed else 0
