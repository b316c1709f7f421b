"""Aggregating row results over seeds and rendering them as markdown."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .libs import OURS, TORCH_PRUNING

LIBRARY_LABELS = {OURS: "pruning_core", TORCH_PRUNING: "Torch-Pruning 1.6.1"}
Key = Tuple[str, str, str, float]  # library, criterion, compensation, ratio


@dataclasses.dataclass
class Aggregate:
    """One configuration's results over its seeds."""

    library: str
    criterion: str
    compensation: str
    ratio: float
    status: str  # ok | n/a | error | timeout
    message: str = ""
    runs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    def values(self, metric: str) -> List[float]:
        return [run[metric] for run in self.runs if isinstance(run.get(metric), (int, float))]

    def mean(self, metric: str) -> Optional[float]:
        values = self.values(metric)
        return statistics.fmean(values) if values else None


def aggregate(results: Iterable[Dict[str, Any]]) -> Dict[Key, Aggregate]:
    """Group rows by configuration; a configuration is ok when any of its seeds ran."""
    table: Dict[Key, Aggregate] = {}
    for row in results:
        key = (row["library"], row["criterion"], row["compensation"], row["ratio"])
        entry = table.setdefault(key, Aggregate(*key, status=row["status"], message=row.get("message", "")))
        if row["status"] == "ok":
            entry.runs.append(row)
            entry.status, entry.message = "ok", ""
    return table


def fmt(entry: Optional[Aggregate], metric: str, digits: int = 3, scale: float = 1.0, suffix: str = "") -> str:
    """``mean`` or ``mean ± sd (n seeds)``; the status when the configuration did not run."""
    if entry is None:
        return "-"
    if entry.status != "ok":
        return entry.status
    values = [v * scale for v in entry.values(metric)]
    if not values:
        return "-"
    text = f"{statistics.fmean(values):.{digits}f}{suffix}"
    if len(set(values)) > 1:
        text += f" ± {statistics.stdev(values):.{digits}f} ({len(values)} seeds)"
    return text


def params_removed(entry: Optional[Aggregate]) -> str:
    if entry is None or entry.status != "ok":
        return fmt(entry, "")
    run = entry.runs[0]
    return f"{100 * (1 - run['params_after'] / run['params_before']):.1f}% ({run['params_after'] / 1e6:.2f} M)"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> List[str]:
    align = align or "l" * len(headers)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(headers) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows]


def configurations(table: Dict[Key, Aggregate]) -> List[Tuple[str, str, str]]:
    """(library, criterion, compensation) that ran in at least one ratio, in first-seen order."""
    seen: Dict[Tuple[str, str, str], None] = {}
    for (library, criterion, compensation, _), entry in table.items():
        if entry.status in ("ok", "error", "timeout"):
            seen.setdefault((library, criterion, compensation), None)
    return list(seen)


def section_table(table: Dict[Key, Aggregate], ratios: Sequence[float], ratio_label: str,
                  per_ratio: Sequence[Tuple[str, Callable[[Optional[Aggregate]], str]]]) -> List[str]:
    """One line per configuration; for each ratio, the columns ``per_ratio`` describes."""
    headers = ["library", "criterion", "compensation"]
    for ratio in ratios:
        headers += [f"{name} ({ratio_label} {ratio})" if len(ratios) > 1 else name for name, _ in per_ratio]
    rows = []
    for library, criterion, compensation in configurations(table):
        cells = [LIBRARY_LABELS.get(library, library), criterion, compensation]
        for ratio in ratios:
            entry = table.get((library, criterion, compensation, ratio))
            cells += [render(entry) for _, render in per_ratio]
        rows.append(cells)
    return markdown_table(headers, rows, "lll" + "r" * (len(headers) - 3))


def unavailable_summary(table: Dict[Key, Aggregate]) -> List[str]:
    """One line naming every configuration this build could not run, and why."""
    missing: Dict[str, List[str]] = {}
    for (library, criterion, compensation, _), entry in table.items():
        if entry.status == "n/a":
            label = f"{criterion}/{compensation}"
            reasons = missing.setdefault(entry.message.split("\n")[0], [])
            if label not in reasons:
                reasons.append(label)
    return [f"Not available in this build of pruning_core ({len(labels)} criterion/compensation pairs: "
            f"{', '.join(labels)}); the pruner said: `{reason}`" for reason, labels in missing.items()]


def failure_notes(table: Dict[Key, Aggregate]) -> List[str]:
    lines = []
    for (library, criterion, compensation, ratio), entry in table.items():
        if entry.status in ("error", "timeout"):
            lines.append(f"{LIBRARY_LABELS.get(library, library)} {criterion}/{compensation} at {ratio}: "
                         f"{entry.status}: `{entry.message[:300]}`")
    return lines


def best(table: Dict[Key, Aggregate], library: str, ratio: float, metric: str,
         higher: bool = True) -> Optional[Aggregate]:
    """The configuration of ``library`` with the best mean ``metric`` at ``ratio``."""
    candidates = [e for (lib, _, _, r), e in table.items()
                  if lib == library and r == ratio and e.status == "ok" and e.mean(metric) is not None]
    if not candidates:
        return None
    return (max if higher else min)(candidates, key=lambda e: e.mean(metric))


def name(entry: Optional[Aggregate]) -> str:
    return "none ran" if entry is None else f"{entry.criterion}/{entry.compensation}"


def parameter_match(table: Dict[Key, Aggregate], ratio: float) -> str:
    """Whether both libraries left the same number of parameters at ``ratio`` (compensation aside)."""
    counts: Dict[str, set] = {}
    for (library, _, compensation, r), entry in table.items():
        if r == ratio and entry.status == "ok" and compensation == "none":
            counts.setdefault(library, set()).update(run["params_after"] for run in entry.runs)
    if len(counts) < 2:
        return f"at {ratio}: only one library ran, no parameter comparison"
    flat = {library: sorted(values) for library, values in counts.items()}
    if all(len(v) == 1 for v in flat.values()) and len({v[0] for v in flat.values()}) == 1:
        return f"at {ratio}: both libraries leave exactly {next(iter(flat.values()))[0]:,} parameters"
    return "at {}: parameter counts differ: {}".format(
        ratio, "; ".join(f"{LIBRARY_LABELS.get(k, k)} {', '.join(f'{x:,}' for x in v)}" for k, v in flat.items()))


def inconsistent_heads(table: Dict[Key, Aggregate]) -> List[str]:
    return [f"{LIBRARY_LABELS.get(e.library, e.library)} {e.criterion}/{e.compensation} at {e.ratio}: q, k and v "
            "kept different heads" for e in table.values()
            if e.status == "ok" and any(run.get("heads_consistent") == 0.0 for run in e.runs)]
