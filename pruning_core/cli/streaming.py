"""``pruning-core prune SPEC --low-memory``: hand the run to the scheme's streaming pruner.

Streaming never holds the whole model, so the phases that need it (verification by
reloading, latency) are replaced by what the scheme's ``stream`` reports.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Optional

from ..errors import ConfigurationError
from .sources import known_schemes, normalize_spec


def _scheme_stream(spec: str) -> Any:
    from .._plugins import get_hub

    schemes = {s.scheme: s for s in get_hub().model_schemes()}
    scheme = normalize_spec(spec, known_schemes()).partition(":")[0]
    found = schemes.get(scheme)
    if found is None or found.stream is None:
        able = sorted(name for name, s in schemes.items() if s.stream is not None)
        raise ConfigurationError(f"--low-memory streams a checkpoint one block at a time, which {scheme}: models "
                                 f"cannot do; schemes that can: {', '.join(able) or 'none installed'}. Drop "
                                 "--low-memory to prune in memory")
    return found.stream


def _calibration(calib: Optional[str], data: Any) -> Any:
    if calib is None:
        return None
    if data is None:
        return int(calib)  # a number of random sequences
    return data


def run_streaming(args: argparse.Namespace, calib_data: Any) -> int:
    """Prune ``args.model`` with its scheme's streaming pruner; print the report."""
    if args.iterative_steps != 1:
        raise ConfigurationError("--low-memory prunes in one step; drop --iterative-steps")
    stream = _scheme_stream(args.model)
    report: Dict[str, Any] = stream(
        args.model, args.output, ratio=args.ratio, importance=args.importance,
        compensation=None if args.compensate == "none" else args.compensate,
        calibration=_calibration(args.calib, calib_data), global_pruning=args.global_pruning,
        ignored_layers=list(args.ignore), round_to=args.round_to, max_memory=args.max_memory)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key.replace('_', ' ')}: {value}")
    return 0
