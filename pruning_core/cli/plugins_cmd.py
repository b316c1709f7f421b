"""``pruning-core plugins``: every plugin with its distribution, hooks and load error."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plugins", help="list installed plugins, their hooks and load errors",
                            description="List plugins with their distribution, hooks and load errors; with --all "
                                        "also the built-in ones and every importance criterion and pruner by name.")
    parser.add_argument("--all", action="store_true",
                        help="include the built-in plugins, and list importance criteria and pruners by name")
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
    named = _named(hub) if args.all else {}
    if args.json:
        print(json.dumps({"plugins": [i.as_dict() for i in infos], "conflicts": conflicts, **named}, indent=2))
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
    for kind, title, option in (("importance_criteria", "importance criteria", "--importance NAME"),
                                ("pruners", "pruners", "tp.pruner.create(NAME, ...)")):
        if named.get(kind):
            print(f"\n{title} ({option}):")
            width = max(len(row["description"]) for row in named[kind])
            for row in named[kind]:
                print(f"  {row['name']:<14} {row['description']:<{width}}  {row['plugin']}")
    return 1 if failed else 0


def _named(hub: Any) -> Dict[str, List[Dict[str, str]]]:
    """Every registered criterion and pruner: name, description and the plugin that registered it."""
    out: Dict[str, List[Dict[str, str]]] = {}
    for kind, registry in (("importance_criteria", hub.importance_criteria()), ("pruners", hub.pruners())):
        rows = []
        for name in registry.names():
            spec = registry.get(name)
            provider = getattr(spec, "provider", None)
            rows.append({"name": name, "description": spec.description,
                         "plugin": provider.name if provider is not None else "?"})
        out[kind] = rows
    return out
