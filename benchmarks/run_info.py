"""What the benchmark scripts share: the commit a run measured, and printing and saving its table."""

from __future__ import annotations

import os
import subprocess
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The checked-out commit, saying so when the library's files differ from it (the run measured those)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pruning_core", "plugins"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return head + (" with uncommitted library changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def publish(text: str, output: Optional[str]) -> None:
    """Print the report and, when ``output`` names a file, write it there too."""
    print(text)
    if output:
        with open(output, "w") as handle:
            handle.write(text)
