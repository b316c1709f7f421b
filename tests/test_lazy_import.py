"""`import pruning_core` stays light, and the names it loads lazily behave as eager imports did (issue 12).

The checks are behavioural (which modules a fresh interpreter holds, which objects
the names resolve to), never timings: `make bench` measures the time.
"""

from __future__ import annotations

import json
import pickle
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import pruning_core as tp

# What `import pruning_core` may add to sys.modules after `import torch`. Growing this set is a decision:
# a module that needs pluggy, the graph or the handlers belongs behind a lazy name.
EAGER_MODULES = {"pruning_core", "pruning_core._version", "pruning_core.errors"}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_import_loads_only_the_version_and_the_errors():
    result = _python("""
        import json, sys
        import torch
        before = set(sys.modules)
        import pruning_core as tp
        after_import = sorted(set(sys.modules) - before)
        tp.DependencyGraph  # the first access loads the graph, and only then
        print(json.dumps({"after_import": after_import, "after_access": sorted(set(sys.modules) - before)}))
    """)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(loaded["after_import"]) == EAGER_MODULES
    assert not any(name == "pluggy" or name.startswith(("pluggy.", "pruning_core.graph", "pruning_core.builtin"))
                   for name in loaded["after_import"])
    assert "pruning_core.graph.depgraph" in loaded["after_access"]


def test_lazy_names_are_the_objects_of_their_home_modules():
    from pruning_core import functional, graph, hookspecs, layer_handler, records, serialization

    assert tp.DependencyGraph is graph.DependencyGraph and tp.Group is graph.Group
    assert tp.GroupItem is graph.GroupItem and tp.Dependency is graph.Dependency
    assert tp.BasePruningFunc is layer_handler.BasePruningFunc and tp.hookimpl is hookspecs.hookimpl
    assert tp.AttentionLayout is records.AttentionLayout and tp.save_pruned is serialization.save_pruned
    assert sorted(functional.__all__) == sorted(tp._functional_names)
    for name in functional.__all__:
        assert getattr(tp, name) == getattr(functional, name), name
    assert tp.prune_conv_out_channels.__self__.__class__.__name__ == "ConvPruner"


def test_every_submodule_is_an_attribute_and_every_public_name_resolves():
    on_disk = {m.name for m in pkgutil.iter_modules(tp.__path__)} - {"__main__"}
    assert on_disk == tp._SUBMODULES
    for name in sorted(on_disk):
        assert getattr(tp, name).__name__ == f"pruning_core.{name}"
    namespace: dict = {}
    exec("from pruning_core import *", namespace)
    assert {name for name in tp.__all__} <= set(namespace)
    assert set(tp.__all__) <= set(dir(tp))
    with pytest.raises(AttributeError, match="no attribute 'plugins'"):
        tp.plugins  # noqa: B018


def test_lazy_names_pickle_and_isinstance_as_before():
    for obj in (tp.DependencyGraph, tp.Group, tp.BasePruningFunc, tp.AttentionLayout, tp.prune_linear_out_channels):
        assert pickle.loads(pickle.dumps(obj)).__qualname__ == obj.__qualname__
    assert pickle.loads(pickle.dumps(tp.DependencyGraph)) is tp.DependencyGraph
    error = pickle.loads(pickle.dumps(tp.UnknownNameError("no criterion 'x'")))
    assert isinstance(error, tp.ConfigurationError) and str(error) == "no criterion 'x'"
    assert isinstance(tp.prune_linear_out_channels.__self__, tp.BasePruningFunc)


def test_every_module_imports_first_in_a_fresh_interpreter():
    # A lazy package __init__ changes which module imports first; no import cycle may depend on the order.
    result = _python("""
        import importlib, pathlib, sys
        import torch
        import pruning_core
        root = pathlib.Path(pruning_core.__file__).parent
        names = sorted(".".join(p.relative_to(root.parent).with_suffix("").parts).replace(".__init__", "")
                       for p in root.rglob("*.py") if p.name != "__main__.py" and "__pycache__" not in p.parts)
        failed = []
        for name in names:
            for key in [k for k in sys.modules if k == "pruning_core" or k.startswith("pruning_core.")]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except Exception as error:
                failed.append(f"{name}: {type(error).__name__}: {error}")
        print(len(names), failed)
    """)
    assert result.returncode == 0, result.stderr
    count, failed = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) > 50 and failed == "[]", failed
