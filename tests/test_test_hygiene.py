"""Test files stand alone: none imports another test file, and none edits ``sys.path``.

Shared helpers live in :mod:`pruning_core.testing` (public, documented, usable by plugin
authors) or in ``conftest.py`` fixtures, never in a test module that others import.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_DIRS = [ROOT / "tests"] + sorted((ROOT / "plugins").glob("*/tests"))
TEST_FILES = sorted(path for folder in TEST_DIRS for path in folder.rglob("*.py"))
# Module names a test file could use to reach another file of a test folder.
TEST_MODULES = {path.stem for path in TEST_FILES if path.stem != "__init__"} | {"tests"}
SYS_PATH_EDITS = {"syspath_prepend", "addsitedir"}


def _is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def _targets(node: ast.AST) -> List[ast.AST]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def violations(source: str, test_modules: Set[str]) -> List[str]:
    """What in ``source`` imports a test module or edits the import path, as ``line: reason``."""
    found: List[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in test_modules:
                    found.append(f"{line}: imports the test module {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                found.append(f"{line}: relative import from {'.' * node.level}{module}")
            elif module.split(".")[0] in test_modules:
                found.append(f"{line}: imports from the test module {module}")
            elif module == "sys" and any(alias.name == "path" for alias in node.names):
                found.append(f"{line}: imports sys.path")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and _is_sys_path(func.value):
                found.append(f"{line}: sys.path.{func.attr}()")
            elif isinstance(func, ast.Attribute) and func.attr in SYS_PATH_EDITS:
                found.append(f"{line}: {func.attr}()")
        for target in _targets(node):
            if any(_is_sys_path(part) for part in ast.walk(target)):
                found.append(f"{line}: assigns to sys.path")
    return sorted(found, key=lambda text: int(text.split(":")[0]))


def test_the_walk_finds_test_files_in_every_test_folder():
    folders = {path.parent for path in TEST_FILES}
    assert ROOT / "tests" in folders and len(TEST_DIRS) >= 4
    assert all(any(path.parent == folder for path in TEST_FILES) for folder in TEST_DIRS)


@pytest.mark.parametrize("source,reason", [
    ("import tests.helpers", "imports the test module tests.helpers"),
    ("from tests.test_atomicity import fingerprint", "imports from the test module tests.test_atomicity"),
    ("from tests import helpers", "imports from the test module tests"),
    ("from hf_models import build", "imports from the test module hf_models"),
    ("import test_ops as ops", "imports the test module test_ops"),
    ("from .conftest import thing", "relative import from .conftest"),
    ("import sys\nsys.path.insert(0, 'x')", "sys.path.insert()"),
    ("import sys\nsys.path.append('x')", "sys.path.append()"),
    ("import sys\nsys.path = ['x'] + sys.path", "assigns to sys.path"),
    ("import sys\nsys.path[:0] = ['x']", "assigns to sys.path"),
    ("import sys\nsys.path += ['x']", "assigns to sys.path"),
    ("from sys import path", "imports sys.path"),
    ("def test(monkeypatch):\n    monkeypatch.syspath_prepend('x')", "syspath_prepend()"),
    ("import site\nsite.addsitedir('x')", "addsitedir()"),
])
def test_the_check_flags_each_kind_of_violation(source, reason):
    assert [text.split(": ", 1)[1] for text in violations(source, {"tests", "hf_models", "test_ops", "conftest"})] \
        == [reason]


def test_the_check_allows_ordinary_imports():
    source = ("import sys\nimport pytest\nfrom pruning_core.testing.oracle import run\n"
              "import pruning_core_hf\nprint(sys.path[0], sys.executable)\n")
    assert violations(source, TEST_MODULES) == []


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_test_file_imports_another_or_edits_sys_path(path):
    assert violations(path.read_text(encoding="utf-8"), TEST_MODULES) == []
