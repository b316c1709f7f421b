"""Small helpers from Torch-Pruning's ``tp.utils``: ``flatten_as_list`` and ``print_tool``."""

from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import ConfigurationError


def flatten_as_list(obj: Any) -> List[Any]:
    """The leaves of nested lists, tuples and dicts (dict values in order), as one flat list.

    A tensor or any other non-container is a leaf: ``flatten_as_list(t) == [t]``.
    """
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        flat: List[Any] = []
        for item in obj:
            flat.extend(flatten_as_list(item))
        return flat
    return [obj]


def _pair_lines(old: List[str], new: List[str]) -> List[str]:
    """Lines of a changed block, each old line paired with its most similar new line (in order)."""
    rows, cols = len(old), len(new)
    # score[i][j]: best total similarity aligning old[i:] with new[j:]; unpaired lines score 0.
    score = [[0.0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            pair = difflib.SequenceMatcher(a=old[i], b=new[j], autojunk=False).ratio() + score[i + 1][j + 1]
            score[i][j] = max(pair, score[i + 1][j], score[i][j + 1])
    out: List[str] = []
    i = j = 0
    while i < rows or j < cols:
        if i < rows and j < cols and score[i][j] == score[i + 1][j + 1] + difflib.SequenceMatcher(
                a=old[i], b=new[j], autojunk=False).ratio():
            out.append(f"{old[i]} => {new[j].lstrip()}")
            i, j = i + 1, j + 1
        elif i < rows and (j == cols or score[i][j] == score[i + 1][j]):
            out.append(f"{old[i]} => (removed)")
            i += 1
        else:
            indent = len(new[j]) - len(new[j].lstrip())
            out.append(f"{' ' * indent}(added) => {new[j].lstrip()}")
            j += 1
    return out


class print_tool:  # noqa: N801 - Torch-Pruning's name
    """Show what pruning changed in a model's printout.

    ``print_tool.before_pruning(model)`` remembers ``str(model)``;
    ``print_tool.after_pruning(model)`` prints it again with every changed line written as
    ``old => new`` and returns that text. Layers added or removed (depth pruning) are shown
    as ``old => (removed)`` and ``(added) => new``.
    """

    _before: Dict[int, str] = {}
    _last: Optional[int] = None

    @staticmethod
    def before_pruning(model: nn.Module) -> None:
        """Remember the model's printout before pruning."""
        print_tool._before[id(model)] = str(model)
        print_tool._last = id(model)

    @staticmethod
    def after_pruning(model: nn.Module, do_print: bool = True) -> str:
        """The printout with changed lines as ``old => new``; printed unless ``do_print=False``."""
        key = id(model) if id(model) in print_tool._before else print_tool._last
        if key is None or key not in print_tool._before:
            raise ConfigurationError("print_tool.after_pruning: call print_tool.before_pruning(model) before "
                                     "pruning, so there is a printout to compare with")
        before = print_tool._before.pop(key).split("\n")
        after = str(model).split("\n")
        lines: List[str] = []
        matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag == "equal":
                lines.extend(before[a0:a1])
                continue
            lines.extend(_pair_lines(before[a0:a1], after[b0:b1]))
        text = "\n".join(lines)
        if do_print:
            print(text)
        return text


__all__ = ["flatten_as_list", "print_tool"]
