"""Real data for the quality benchmark, all of it shipped with Python or scikit-learn.

- Sentences: docstrings of the standard library's own modules, split into sentences,
  filtered to plain prose, deduplicated, shuffled with a fixed seed and cut into
  disjoint calibration and held-out sets.
- Text for the small language model: the standard library's source files as bytes,
  split by file (a file is wholly in training or wholly held out).
- Images: ``sklearn.datasets.load_digits`` with a fixed, stratified train/test split.

Everything here is deterministic for a given Python installation; the benchmark
records the Python version next to its results because the corpus is that
version's standard library.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import re
import sysconfig
from typing import Dict, List, Sequence, Tuple

import torch

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Markup, code and abbreviations that make a "sentence" something other than prose.
_NOT_PROSE = re.compile(r"[=<>{}\[\]`|_#*\\/@$~^:;%]|\.\.|\be\.g\.|\bi\.e\.|\betc\.")


def stdlib_root() -> str:
    """The directory of the running interpreter's standard library."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_python_files(root: str | None = None) -> List[str]:
    """Every ``.py`` file of the standard library except test suites, as sorted relative paths."""
    root = root or stdlib_root()
    found: List[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        rel = os.path.relpath(folder, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")]
    return sorted(found)


def docstrings(paths: Sequence[str], root: str | None = None) -> List[str]:
    """Module, class and function docstrings of the given files (unparsable files are skipped)."""
    root = root or stdlib_root()
    found: List[str] = []
    for rel in paths:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text:
                    found.append(text)
    return found


def prose_sentences(texts: Sequence[str], min_words: int = 8, max_words: int = 40) -> List[str]:
    """Sentences of plain prose from docstrings, deduplicated and sorted.

    Paragraphs that hold examples or lists are skipped; a sentence must start with
    a capital, end with a full stop and carry no code or markup characters.
    """
    found = set()
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            lines = [line.strip() for line in paragraph.splitlines()]
            if any(line.startswith((">>>", "-", "*", "+")) for line in lines):
                continue
            for sentence in _SENTENCE_END.split(" ".join(lines)):
                sentence = " ".join(sentence.split())
                words = sentence.split()
                if not (min_words <= len(words) <= max_words):
                    continue
                if not sentence[0].isupper() or not sentence.endswith(".") or _NOT_PROSE.search(sentence):
                    continue
                if "(" in sentence and ")" not in sentence or "()" in sentence:
                    continue
                if sum(c.isalpha() or c == " " for c in sentence) / len(sentence) < 0.9:
                    continue
                found.add(sentence)
    return sorted(found)


def split_sentences(sentences: Sequence[str], n_calibration: int, n_heldout: int,
                    seed: int = 0) -> Tuple[List[str], List[str]]:
    """Disjoint (calibration, held-out) sets drawn with a fixed seed."""
    unique = sorted(set(sentences))
    if n_calibration + n_heldout > len(unique):
        raise ValueError(f"asked for {n_calibration} + {n_heldout} sentences, only {len(unique)} available")
    order = list(unique)
    random.Random(seed).shuffle(order)
    return order[:n_calibration], order[n_calibration:n_calibration + n_heldout]


def stdlib_sentences(n_calibration: int, n_heldout: int, seed: int = 0,
                     paths: Sequence[str] | None = None) -> Tuple[List[str], List[str], int]:
    """(calibration, held-out, size of the pool) from the standard library's docstrings."""
    pool = prose_sentences(docstrings(paths if paths is not None else stdlib_python_files()))
    calibration, heldout = split_sentences(pool, n_calibration, n_heldout, seed)
    return calibration, heldout, len(pool)


def file_split(paths: Sequence[str], heldout_fraction: float = 0.1) -> Tuple[List[str], List[str]]:
    """(training, held-out) files, decided per file by a hash of its path.

    Hashing the path (rather than shuffling the list) keeps a file on the same side
    when other files are added or removed, e.g. between Python patch releases.
    """
    train, heldout = [], []
    for rel in sorted(paths):
        bucket = int(hashlib.sha256(rel.replace(os.sep, "/").encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (heldout if bucket < heldout_fraction else train).append(rel)
    return train, heldout


def byte_stream(paths: Sequence[str], root: str | None = None) -> torch.Tensor:
    """The files' bytes, concatenated with a NUL byte between files, as a uint8 tensor."""
    root = root or stdlib_root()
    chunks = []
    for rel in paths:
        with open(os.path.join(root, rel), "rb") as handle:
            chunks.append(handle.read() + b"\0")
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).clone()


def random_windows(stream: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at random offsets (fixed seed), as int64."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (count,), generator=generator)
    return torch.stack([stream[s:s + length] for s in starts.tolist()]).long()


def even_windows(stream: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """``count`` non-overlapping windows spread evenly over the stream, as int64."""
    stride = (len(stream) - length) // max(count - 1, 1)
    if stride < length:
        raise ValueError(f"a stream of {len(stream)} bytes cannot hold {count} disjoint windows of {length}")
    return torch.stack([stream[i * stride:i * stride + length] for i in range(count)]).long()


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> Dict[str, torch.Tensor]:
    """sklearn's 8x8 digits as float images in [0, 1] with a stratified, seeded train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = list(range(len(digits.target)))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, random_state=seed,
                                           stratify=digits.target)
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = torch.tensor(sorted(train_idx)), torch.tensor(sorted(test_idx))
    return {"x_train": images[train_idx], "y_train": labels[train_idx], "x_test": images[test_idx],
            "y_test": labels[test_idx], "train_index": train_idx, "test_index": test_idx}
