"""The README's plugin section and hookspecs.py agree (as datasette's test_plugin_hooks_are_documented)."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re

import pluggy
import pytest

from pruning_core import _plugins, hookspecs, records

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def plugin_section() -> str:
    text = README.read_text()
    start = text.index("\n## Plugins\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def hookspec_functions():
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    return {name: getattr(hookspecs, name) for name in dir(hookspecs)
            if manager.parse_hookspec_opts(hookspecs, name) is not None}


def returned_record_types():
    """Every record type a hook may return, plus what those records hold (ModelSource)."""
    found = {t for types_ in _plugins.RECORD_TYPES.values() for t in types_}
    return sorted(found | {records.ModelSource}, key=lambda t: t.__name__)


def signature(name: str, function) -> str:
    return f"{name}({', '.join(inspect.signature(function).parameters)})"


def test_the_spec_list_is_complete():
    assert set(hookspec_functions()) == {
        "register_layer_handlers", "register_op_rules", "register_importance_criteria", "register_pruners",
        "register_model_schemes", "register_state_codecs", "collect_structure_hints", "fixup_after_prune",
        "after_step", "tracing_context", "resolve_missing_handler_hint"}
    assert set(_plugins.RECORD_TYPES) == {n for n in hookspec_functions() if n.startswith(("register_", "collect_"))}


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_plugin_hooks_are_documented(name):
    """Each hook is named in the README's plugin section with its current argument list."""
    function = hookspec_functions()[name]
    assert f"`{signature(name, function)}`" in plugin_section(), \
        f"README's Plugins section does not document `{signature(name, function)}`"


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hookspec_docstrings_are_the_reference(name):
    """hookspecs.py documents each argument and says when the hook was added."""
    function = hookspec_functions()[name]
    doc = inspect.getdoc(function) or ""
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{name}: no ':param {parameter}:' in its docstring"
    assert re.search(r"Added in \d+\.\d+", doc), f"{name}: its docstring does not say when it was added"


@pytest.mark.parametrize("record", returned_record_types(), ids=lambda t: t.__name__)
def test_records_are_documented_with_their_fields(record):
    fields = [f.name for f in dataclasses.fields(record) if f.name != "provider"]
    shown = f"`{record.__name__}({', '.join(fields)})`"
    assert shown in plugin_section(), f"README's Plugins section does not show {shown}"
    doc = inspect.getdoc(record) or ""
    for field in fields:
        assert f":param {field}:" in doc, f"{record.__name__}: no ':param {field}:' in its docstring"


def test_replaced_hooks_are_explained():
    section = plugin_section()
    for old in hookspecs.REPLACED_HOOKS:
        assert f"`{old}(" in section, f"README does not say how to port the 0.1 hook {old}"
        assert old not in hookspec_functions()
