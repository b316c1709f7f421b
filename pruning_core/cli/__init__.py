"""The ``pruning-core`` command line (also ``python -m pruning_core``).

Subcommands: ``prune`` (prune a model and save it), ``inspect`` (show its
dependency groups) and ``plugins`` (list plugins and what they register). Exit
status: 0 on success, 1 when the saved copy does not reload to the same model, 2 on
bad input (a message, never a traceback), 3 on an internal error (with traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from .._version import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import inspect_cmd, plugins_cmd, prune_cmd

    parser = argparse.ArgumentParser(prog="pruning-core", description="Structural pruning for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"pruning-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    prune_cmd.add_parser(sub)
    inspect_cmd.add_parser(sub)
    plugins_cmd.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..errors import PruningError

    try:
        return int(args.func(args) or 0)
    except PruningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: keep the traceback for the report
        traceback.print_exc()
        print("pruning-core: internal error (the traceback above is a bug report)", file=sys.stderr)
        return 3


__all__ = ["main", "build_parser"]
