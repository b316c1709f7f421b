"""The layering rules, checked on the source: collaborators use public objects, plugins use the public API.

* No module outside ``pruning_core/graph`` touches a private name the graph defines.
* No plugin imports a private module or name of the core, or touches a private the core defines.
* No module of the core or of a plugin is longer than 400 lines.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, List, Set, Tuple

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ROOT / "pruning_core"
GRAPH = CORE / "graph"
PLUGINS = sorted((ROOT / "plugins").glob("*/src"))
MAX_LINES = 400


def _python_files(*roots: pathlib.Path) -> Iterator[pathlib.Path]:
    for root in roots:
        yield from sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_privates(files: List[pathlib.Path]) -> Set[str]:
    """Private names a set of modules defines: module-level names, methods, and ``self._x`` attributes."""
    names: Set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _is_private(node.id):
                names.add(node.id)
    # Names that torch's own objects use (module._parameters, tensor._version) are not ours to forbid.
    return names - set(dir(torch.nn.Module())) - set(dir(torch.Tensor))


def _private_uses(path: pathlib.Path, forbidden: Set[str]) -> List[Tuple[int, str]]:
    """``x._name`` and ``from ... import _name`` for names in ``forbidden``.

    A class's own privates are fine: ``self._x``, ``cls._x`` and ``super()._x`` (a subclass
    extending ``BasePruningFunc._prune_out``, the documented way to write a handler).
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in forbidden:
            owner = node.value
            own = (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or \
                (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super")
            if not own:
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ImportFrom):
            found.extend((node.lineno, f"import {alias.name}") for alias in node.names if alias.name in forbidden)
    return found


def _core_imports(path: pathlib.Path) -> List[Tuple[int, str]]:
    """Imports of a private core module (``pruning_core._plugins``) or of a private name from the core."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pruning_core"):
            if any(_is_private(part) for part in node.module.split(".")):
                found.append((node.lineno, f"from {node.module}"))
            found.extend((node.lineno, f"from {node.module} import {alias.name}")
                         for alias in node.names if _is_private(alias.name))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, f"import {alias.name}") for alias in node.names
                         if alias.name.startswith("pruning_core")
                         and any(_is_private(part) for part in alias.name.split(".")))
    return found


def _record_attribute_names() -> Set[str]:
    """String constants the core uses as private attribute names on modules (``RECORD_ATTR``)."""
    names = set()
    for node in ast.walk(ast.parse((GRAPH / "record.py").read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if any(isinstance(t, ast.Name) and t.id.endswith("_ATTR") for t in node.targets):
                names.add(node.value.value)
    return names


def _report(problems: Dict[str, List[Tuple[int, str]]]) -> str:
    return "\n".join(f"{path}:{line}: {what}" for path, items in problems.items() for line, what in items)


def test_nothing_outside_the_graph_touches_its_privates():
    graph_privates = _defined_privates(list(_python_files(GRAPH)))
    assert "_index" in graph_privates or graph_privates, "the scan found no private names: it is broken"
    problems = {}
    for path in _python_files(CORE, *PLUGINS):
        if GRAPH in path.parents:
            continue
        uses = _private_uses(path, graph_privates)
        if uses:
            problems[str(path.relative_to(ROOT))] = uses
    assert not problems, "private graph names used outside pruning_core/graph:\n" + _report(problems)


def test_plugins_use_only_the_public_api_of_the_core():
    core_privates = _defined_privates(list(_python_files(CORE)))
    record_names = _record_attribute_names()
    assert record_names, "RECORD_ATTR was not found in graph/record.py: update this test"
    problems = {}
    for path in _python_files(*PLUGINS):
        uses = _core_imports(path) + _private_uses(path, core_privates)
        uses += [(node.lineno, repr(node.value)) for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and node.value in record_names]
        if uses:
            problems[str(path.relative_to(ROOT))] = uses
    assert not problems, "plugins reaching into pruning_core's privates:\n" + _report(problems)


def test_the_scans_catch_what_they_are_meant_to(tmp_path):
    # The checks above pass vacuously if the scanners miss things: feed them a known offender.
    offender = tmp_path / "offender.py"
    offender.write_text("from pruning_core._plugins import get_hub\n"
                        "from pruning_core.serialization import _helper\n"
                        "def f(group):\n    return group._graph._index\n")
    assert len(_core_imports(offender)) == 2
    assert [what for _, what in _private_uses(offender, {"_graph", "_index"})] == ["._index", "._graph"]


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _python_files(CORE, *PLUGINS)}
    assert not {k: v for k, v in long.items() if v > MAX_LINES}, \
        f"modules over {MAX_LINES} lines: {({k: v for k, v in long.items() if v > MAX_LINES})}"
