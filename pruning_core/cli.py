"""The ``pruning-core`` command line (also ``python -m pruning_core``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from ._version import __version__


def _cmd_plugins(args: argparse.Namespace) -> int:
    from ._plugins import get_hub

    hub = get_hub()
    infos = sorted(hub.infos.values(), key=lambda i: (not i.builtin, i.name))
    builtin_count = sum(1 for i in infos if i.builtin)
    if not args.all:
        infos = [i for i in infos if not i.builtin]
    conflicts = hub.conflicts()
    if args.json:
        print(json.dumps({"plugins": [i.as_dict() for i in infos], "conflicts": conflicts}, indent=2))
        return 1 if any(i.error for i in infos) or conflicts else 0
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
    return 1 if any(i.error for i in infos) or conflicts else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruning-core", description="Structural pruning for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"pruning-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = sub.add_parser("plugins", help="list installed plugins, their hooks and load errors")
    plugins.add_argument("--all", action="store_true", help="include the built-in plugins")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .errors import PruningError

    try:
        return int(args.func(args) or 0)
    except PruningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
