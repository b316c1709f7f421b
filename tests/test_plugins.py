"""The plugin system: discovery, isolation of failures, conflicts, switches and the CLI listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core import _plugins, hookspecs
from pruning_core.testing import make_plugin


class Doubler(nn.Module):
    """A third-party layer: y = x @ W^T (like Linear, but not a Linear subclass)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))

    def forward(self, x):
        return 2 * torch.matmul(torch.sin(x), self.weight.t())


class DoublerHandler:
    """Implements only the four contract methods."""

    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.weight.shape[0]) if i not in set(idxs)]
        layer.weight = nn.Parameter(layer.weight.data[keep])
        return layer

    def prune_in_channels(self, layer, idxs):
        keep = [i for i in range(layer.weight.shape[1]) if i not in set(idxs)]
        layer.weight = nn.Parameter(layer.weight.data[:, keep])
        return layer

    def get_out_channels(self, layer):
        return layer.weight.shape[0]

    def get_in_channels(self, layer):
        return layer.weight.shape[1]


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name, plugin=None, error=None, dist="fake-dist"):
        self.name, self.value = name, f"fake_{name}.plugin"
        self._plugin, self._error = plugin, error
        self.dist = FakeDist(dist)

    def load(self):
        if self._error is not None:
            raise self._error
        return self._plugin


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install fake entry points and rebuild the hub; restore afterwards."""
    installed = []
    real = _plugins.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") != "pruning_core":
            return real(**kwargs)
        return list(installed)

    monkeypatch.setattr(_plugins.metadata, "entry_points", entry_points)
    _plugins.reset_hub()
    yield installed
    _plugins.reset_hub()


def handler_plugin(name, target=Doubler):
    return make_plugin(name, register_layer_handlers=lambda: [tp.LayerHandlerSpec(target=target,
                                                                                  handler=DoublerHandler())])


def doubler_model():
    return nn.Sequential(nn.Linear(4, 8), Doubler(8, 6), nn.Linear(6, 2))


def test_entry_point_plugin_handles_its_layer_without_extra_arguments(fake_entry_points):
    fake_entry_points.append(FakeEntryPoint("doubler", handler_plugin("doubler")))
    model = doubler_model()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 4))
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1, 5])
    assert any(item.dep.target.module is model[1] for item in group)
    group.prune()
    assert model[1].weight.shape == (6, 6)
    assert model(torch.randn(3, 4)).shape == (3, 2)
    info = _plugins.get_hub().infos["doubler"]
    assert (info.distribution, info.version, info.hooks) == ("fake-dist", "1.0", ["register_layer_handlers"])


def test_dotted_path_targets_match_without_importing(fake_entry_points):
    path = f"{Doubler.__module__}.{Doubler.__qualname__}"
    fake_entry_points.append(FakeEntryPoint("doubler", handler_plugin("doubler", target=path)))
    spec = _plugins.get_hub().handlers().lookup(Doubler)
    assert spec is not None and isinstance(spec.handler, DoublerHandler)


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(fake_entry_points):
    fake_entry_points.append(FakeEntryPoint("broken", error=ImportError("no module named 'fancylib'"),
                                            dist="broken-dist"))
    fake_entry_points.append(FakeEntryPoint("doubler", handler_plugin("doubler")))
    hub = _plugins.get_hub()
    assert "ImportError: no module named 'fancylib'" in hub.infos["broken"].error
    assert hub.infos["doubler"].error is None
    assert hub.handlers().lookup(Doubler) is not None
    assert hub.handlers().lookup(nn.Conv2d) is not None


def test_strict_mode_raises_on_a_broken_plugin(fake_entry_points, monkeypatch):
    monkeypatch.setenv("PRUNING_CORE_STRICT_PLUGINS", "1")
    fake_entry_points.append(FakeEntryPoint("broken", error=RuntimeError("boom")))
    with pytest.raises(tp.PluginError, match="broken.*boom"):
        _plugins.get_hub()


def test_two_plugins_claiming_a_layer_is_an_error_naming_both(fake_entry_points):
    fake_entry_points.append(FakeEntryPoint("first", handler_plugin("first"), dist="first-dist"))
    fake_entry_points.append(FakeEntryPoint("second", handler_plugin("second"), dist="second-dist"))
    hub = _plugins.get_hub()
    with pytest.raises(tp.PluginConflictError) as error:
        hub.handlers().lookup(Doubler)
    assert "first-dist" in str(error.value) and "second-dist" in str(error.value)
    assert "customized_pruners={Doubler: handler}" in str(error.value)
    assert any("Doubler" in line for line in hub.conflicts())
    # Other layers still resolve.
    assert hub.handlers().lookup(nn.Linear) is not None
    # customized_pruners settles it for one graph.
    model = doubler_model()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 4), customized_pruners={Doubler: DoublerHandler()})
    assert DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0])


class Fancy(nn.Module):
    pass


# One record of each kind, all under the key "fancy" (or the Fancy class), and how the core looks it up.
CONFLICTING = {
    "register_layer_handlers": (lambda: tp.LayerHandlerSpec(target=Fancy, handler=DoublerHandler()),
                                lambda hub: hub.handlers().lookup(Fancy), lambda hub: hub.handlers().lookup(nn.Linear)),
    "register_op_rules": (lambda: tp.OpRuleSpec(op="aten::fancy", rule=lambda call: None),
                          lambda hub: hub.op_rules().get("aten::fancy"), lambda hub: hub.op_rules().get("aten::addmm")),
    "register_importance_criteria": (lambda: tp.ImportanceSpec("fancy", factory=object),
                                     lambda hub: hub.importance_criteria().get("Fancy"),
                                     lambda hub: hub.importance_criteria().get("l2")),
    "register_pruners": (lambda: tp.PrunerSpec("fancy", factory=object), lambda hub: hub.pruners().get("fancy"),
                         lambda hub: hub.pruners().get("magnitude")),
    "register_model_schemes": (lambda: tp.ModelScheme("fancy", "fancy:x", resolve=lambda spec: None),
                               lambda hub: hub.resolve_model_spec("fancy:x"),
                               lambda hub: hub.model_schemes() and hub.resolve_model_spec("nosuchscheme:x") is None),
    "register_state_codecs": (lambda: tp.StateCodec("fancy", collect=lambda m: None, restore=lambda m, s: None),
                              lambda hub: tp.save_pruned(nn.Linear(2, 2), "/nonexistent/never-written"),
                              lambda hub: hub.state_codecs().get("hf") if "hf" in hub.state_codecs() else True),
}


@pytest.mark.parametrize("hook", sorted(CONFLICTING))
def test_one_conflict_rule_for_every_kind_of_record(fake_entry_points, hook):
    """Two providers of one key: looking that key up names both; every other key keeps working."""
    make_record, look_up, unrelated = CONFLICTING[hook]
    for name in ("first", "second"):
        plugin = make_plugin(name, **{hook: lambda: [make_record()]})
        fake_entry_points.append(FakeEntryPoint(name, plugin, dist=f"{name}-dist"))
    hub = _plugins.get_hub()
    with pytest.raises(tp.PluginConflictError) as error:
        look_up(hub)
    message = str(error.value)
    assert "plugin 'first' (first-dist 1.0)" in message and "plugin 'second' (second-dist 1.0)" in message
    assert unrelated(hub)
    assert any("first-dist" in line and "second-dist" in line for line in hub.conflicts())
    assert all(hub.infos[name].error is None for name in ("first", "second"))


def test_misnamed_hooks_and_bad_records_are_plugin_errors(fake_entry_points):
    fake_entry_points.append(FakeEntryPoint("typo", make_plugin("typo", register_layer_handler=lambda: [])))
    fake_entry_points.append(FakeEntryPoint("badrecord", make_plugin("badrecord", register_layer_handlers=lambda: [42])))
    fake_entry_points.append(FakeEntryPoint("old", make_plugin("old", resolve_model_spec=lambda spec: None)))
    hub = _plugins.get_hub()
    assert "unknown hook(s) register_layer_handler" in hub.infos["typo"].error
    # The known hooks come from the spec markers, so every one is listed (restore-like names included).
    specs = [name for name, value in vars(hookspecs).items() if hasattr(value, "pruning_core_spec")]
    assert "after_step" in specs and "tracing_context" in specs and len(specs) == 11
    listed = hub.infos["typo"].error.split("known hooks: ", 1)[1]
    assert sorted(listed.split(", ")) == sorted(specs)
    assert "resolve_model_spec is gone since 0.2" in hub.infos["old"].error
    hub.handlers()
    assert "returned int, expected LayerHandlerSpec" in hub.infos["badrecord"].error


def test_record_validation_names_the_field():
    with pytest.raises(tp.PluginError, match="lacks prune_in_channels"):
        tp.LayerHandlerSpec(target=nn.Linear, handler=types.SimpleNamespace(
            prune_out_channels=print, get_out_channels=print, get_in_channels=print))
    with pytest.raises(tp.PluginError, match="dotted path"):
        tp.LayerHandlerSpec(target="Linear", handler=DoublerHandler())


def test_environment_selects_and_disables_plugins(fake_entry_points, monkeypatch):
    fake_entry_points.extend([FakeEntryPoint("one", make_plugin("one")), FakeEntryPoint("two", make_plugin("two"))])
    monkeypatch.setenv("PRUNING_CORE_PLUGINS", "two")
    _plugins.reset_hub()
    assert "two" in _plugins.get_hub().infos and "one" not in _plugins.get_hub().infos
    monkeypatch.setenv("PRUNING_CORE_PLUGINS", "none")
    _plugins.reset_hub()
    assert not any(not i.builtin for i in _plugins.get_hub().infos.values())
    monkeypatch.delenv("PRUNING_CORE_PLUGINS")
    monkeypatch.setenv("PRUNING_CORE_DISABLE_PLUGINS", "one")
    _plugins.reset_hub()
    assert "two" in _plugins.get_hub().infos and "one" not in _plugins.get_hub().infos


def test_builtin_torch_nn_support_registers_through_the_same_hooks():
    hub = _plugins.get_hub()
    builtin = [i for i in hub.infos.values() if i.builtin]
    assert any("register_layer_handlers" in i.hooks for i in builtin)
    assert any("register_op_rules" in i.hooks for i in builtin)
    spec = hub.handlers().lookup(nn.Conv2d)
    assert spec.provider.name == "builtin.conv"


def _python(code, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def test_import_is_light_and_loads_no_plugin():
    result = _python("""
        import sys
        import pruning_core as tp
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in
                       {'transformers', 'timm', 'ultralytics', 'torchvision', 'pruning_core_hf',
                        'pruning_core_timm', 'pruning_core_yolo'})
        from pruning_core import _plugins, hookspecs
        print(heavy, _plugins.is_loaded(), 'pruning_core.pruner' in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False False"


def test_plugins_command_lists_installed_plugins():
    result = subprocess.run([sys.executable, "-m", "pruning_core", "plugins", "--json"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert listed["hf"]["distribution"] == "pruning-core-hf"
    assert listed["timm"]["distribution"] == "pruning-core-timm"
    assert listed["yolo"]["distribution"] == "pruning-core-yolo"
    assert all(p["error"] is None for p in listed.values())
    text = subprocess.run([sys.executable, "-m", "pruning_core", "plugins"], capture_output=True, text=True,
                          timeout=300)
    assert "pruning-core-hf" in text.stdout and "built-in plugins loaded" in text.stdout


def test_trace_switch_logs_hook_calls():
    result = _python("""
        import torch, pruning_core as tp
        tp.DependencyGraph().build_dependency(torch.nn.Linear(3, 4), torch.randn(2, 3))
    """, env={"PRUNING_CORE_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    assert "register_layer_handlers" in result.stderr


PLUGIN_PROJECT = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "swishlinear-pruning"
        version = "2.3.0"

        [project.entry-points.pruning_core]
        swishlinear = "swishlinear.plugin"
    """,
    "swishlinear/__init__.py": """
        import torch
        from torch import nn

        class SwishLinear(nn.Module):
            def __init__(self, n_in, n_out):
                super().__init__()
                self.weight = nn.Parameter(torch.randn(n_out, n_in))

            def forward(self, x):
                return torch.nn.functional.silu(x) @ torch.linalg.matrix_exp(torch.eye(x.shape[-1])) @ self.weight.t()
    """,
    "swishlinear/plugin.py": """
        from pruning_core import LayerHandlerSpec, hookimpl
        from torch import nn

        class Handler:
            def prune_out_channels(self, layer, idxs):
                keep = [i for i in range(layer.weight.shape[0]) if i not in set(idxs)]
                layer.weight = nn.Parameter(layer.weight.data[keep])
                return layer

            def prune_in_channels(self, layer, idxs):
                keep = [i for i in range(layer.weight.shape[1]) if i not in set(idxs)]
                layer.weight = nn.Parameter(layer.weight.data[:, keep])
                return layer

            def get_out_channels(self, layer):
                return layer.weight.shape[0]

            def get_in_channels(self, layer):
                return layer.weight.shape[1]

        @hookimpl
        def register_layer_handlers():
            return [LayerHandlerSpec(target="swishlinear.SwishLinear", handler=Handler())]
    """,
}


@pytest.mark.slow
def test_a_real_installed_distribution_is_discovered(tmp_path):
    project = tmp_path / "project"
    for rel, text in PLUGIN_PROJECT.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(project)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = _python("""
        import torch, pruning_core as tp
        from swishlinear import SwishLinear
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), SwishLinear(8, 6), torch.nn.Linear(6, 2))
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(3, 4))
        group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 3])
        assert any(item.dep.target.module is model[1] for item in group), group
        group.prune()
        print(tuple(model[1].weight.shape), tuple(model(torch.randn(3, 4)).shape))
    """, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(6, 6) (3, 2)"
    listing = subprocess.run([sys.executable, "-m", "pruning_core", "plugins"], capture_output=True, text=True,
                             env=dict(os.environ, **env), timeout=300)
    assert "swishlinear" in listing.stdout and "swishlinear-pruning 2.3.0" in listing.stdout
