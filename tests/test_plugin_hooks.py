"""One calling path for plugins: isolation and stamping through pm.hook, tracing, state codecs, after_step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import pruning_core as tp
from pruning_core.testing import make_plugin
from pruning_core import _plugins


@pytest.fixture
def hub():
    """The hub, with every plugin this test registers removed afterwards."""
    hub = _plugins.get_hub()
    before = set(hub.infos)
    yield hub
    for name in set(hub.infos) - before:
        hub.unregister(name)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def pruned_mlp():
    model = mlp()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1, 4, 6]).prune()
    return model, DG


def test_a_failing_hook_is_isolated_inside_the_pluggy_call(hub, monkeypatch):
    calls = []
    undo = hub.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name), lambda *args: None)
    try:
        def broken():
            raise RuntimeError("criteria exploded")

        hub.register(make_plugin("broken", register_importance_criteria=broken), "broken")
        hub.register(make_plugin("good", register_importance_criteria=lambda: [
            tp.ImportanceSpec("goodcrit", factory=object)]), "good")
        registry = hub.importance_criteria()
    finally:
        undo()
    assert calls == ["register_importance_criteria"]  # one pluggy call, not a loop of our own
    assert registry.get("goodcrit").provider.name == "good"  # stamped by the wrapper
    assert "l2" in registry.names()
    assert hub.infos["broken"].error == ("plugin 'broken' failed in register_importance_criteria: "
                                         "RuntimeError: criteria exploded")
    monkeypatch.setenv("PRUNING_CORE_STRICT_PLUGINS", "1")
    hub.unregister("good")  # rebuilds the registries on next use
    with pytest.raises(tp.PluginError, match="plugin 'broken' failed in register_importance_criteria"):
        hub.importance_criteria()


def test_pluggy_still_filters_arguments_through_the_wrapper(hub):
    seen = []
    hub.register(make_plugin("noargs", collect_structure_hints=lambda: seen.append("noargs") or []), "noargs")
    hub.register(make_plugin("withmodel", collect_structure_hints=lambda model: seen.append(model) or [
        tp.StructureHint(module=model, keep=True)]), "withmodel")
    model = nn.Linear(2, 2)
    hints = hub.structure_hints(model)
    assert "noargs" in seen and model in seen
    assert [h.provider.name for h in hints if h.module is model] == ["withmodel"]
    impls = {impl.plugin_name: impl.argnames for impl in hub.pm.hook.collect_structure_hints.get_hookimpls()}
    assert impls["noargs"] == () and impls["withmodel"] == ("model",)


def test_a_failing_notification_undoes_the_step(hub):
    def after_step(model):
        raise ValueError("config refused")

    hub.register(make_plugin("refuses", after_step=after_step), "refuses")
    model = mlp()
    before = [p.shape for p in model.parameters()]
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(2, 4), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5)
    with pytest.raises(tp.PruneFailedError, match="after_step hook failed: ValueError: config refused"):
        pruner.step()
    assert [p.shape for p in model.parameters()] == before
    group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0])
    with pytest.raises(tp.PruneFailedError, match="config refused"):
        group.prune()  # a group pruned by hand is a step of its own, undone as a whole
    assert [p.shape for p in model.parameters()] == before


def test_after_step_sees_the_whole_step_on_the_real_model(hub):
    seen = []
    hub.register(make_plugin("watch", after_step=lambda model, graph: seen.append(
        (model, graph, model[0].out_features))), "watch")
    model = mlp()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(2, 4), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5)
    pruner.step()
    assert len(seen) == 1 and all(m is model and g is pruner.DG for m, g, _ in seen)  # once, never on a copy
    assert seen[-1][2] == model[0].out_features == 4  # the call comes after every group was removed
    seen.clear()
    group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0])
    group.prune()
    assert [width for _, _, width in seen] == [3]  # a group pruned by hand is a step of its own
    seen.clear()
    model = mlp()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(2, 4), tp.importance.MagnitudeImportance(),
                                       pruning_ratio=0.5)
    groups = 0
    for group in pruner.step(interactive=True):
        group.prune()
        groups += 1
    assert groups and len(seen) == 1 and seen[-1][2] == 4  # once, when the interactive step is complete


class Meta:
    """State outside modules, like a framework config object."""

    def __init__(self):
        self.width = 8


def codec_plugin():
    def collect(model):
        return {"width": model.meta.width, "sizes": (1, 2)} if hasattr(model, "meta") else None

    def restore(model, state):
        model.meta.width = state["width"]
        model.meta.sizes = state["sizes"]

    return make_plugin("metastate", register_state_codecs=lambda: [tp.StateCodec("metastate", collect, restore)])


def test_state_codec_round_trip_through_save_and_load(hub, tmp_path):
    hub.register(codec_plugin(), "metastate")
    model, _ = pruned_mlp()
    model.meta = Meta()
    model.meta.width = model[0].out_features
    tp.save_pruned(model, str(tmp_path / "saved"))
    record = json.loads((tmp_path / "saved" / "pruning.json").read_text())
    assert record["extra"] == {"metastate": {"width": 5, "sizes": {"tuple": [1, 2]}}}
    fresh = mlp()
    fresh.meta = Meta()
    tp.load_pruned(fresh, str(tmp_path / "saved"))
    assert (fresh.meta.width, fresh.meta.sizes) == (5, (1, 2))
    x = torch.randn(3, 4)
    assert torch.equal(fresh(x), model(x))


def test_state_of_an_unknown_codec_and_failing_codecs_are_serialization_errors(hub, tmp_path):
    model, _ = pruned_mlp()
    payload = tp.state_dict(model)
    payload["extra"] = {"gone": {"x": 1}}
    payload.pop("record_sha256")
    with pytest.raises(tp.SerializationError, match="state of 'gone', which no installed plugin restores"):
        tp.load_state_dict(mlp(), payload)

    def collect(model):
        return {"tensor": torch.zeros(1)}

    hub.register(make_plugin("bad", register_state_codecs=lambda: [
        tp.StateCodec("bad", collect, lambda model, state: None)]), "bad")
    with pytest.raises(tp.SerializationError, match="state codec 'bad' of plugin 'bad' returned state that is not"):
        tp.state_dict(model)


def test_state_saved_under_a_plugin_name_by_0_1_still_loads(hub):
    """0.1 stored each plugin's state under its plugin name; a codec of that name restores it."""
    hub.register(codec_plugin(), "metastate")
    model, _ = pruned_mlp()
    payload = tp.state_dict(model)
    payload["extra"] = {"metastate": {"width": 5, "sizes": {"tuple": [1, 2]}}}  # as 0.1 wrote it
    payload.pop("record_sha256")  # hand-built: no record checksum, as for an edited payload
    fresh = mlp()
    fresh.meta = Meta()
    tp.load_state_dict(fresh, payload)
    assert (fresh.meta.width, fresh.meta.sizes) == (5, (1, 2))


def test_tracing_shows_every_hook_call_in_one_format_including_state_codecs(tmp_path):
    code = f"""
        import torch, pruning_core as tp
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
        DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1]).prune()
        tp.save_pruned(model, {str(tmp_path / 'saved')!r})
        fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        tp.load_pruned(fresh, {str(tmp_path / 'saved')!r})
    """
    env = dict(os.environ, PRUNING_CORE_TRACE_PLUGINS="1", PRUNING_CORE_PLUGINS="none")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pruning_core:")]
    called = [re.match(r"pruning_core: (\w+)\(", line).group(1) for line in lines if " -> " in line]
    for hook in ("register_layer_handlers", "register_op_rules", "fixup_after_prune", "after_step",
                 "register_state_codecs"):
        assert hook in called, (hook, called)
    call = re.compile(r"pruning_core: \w+\((\w+=[^,]+(, )?)*\) -> [\w., ]+$")
    answer = re.compile(r"pruning_core: \w+ (returned .+|raised \w+: .*)$")
    assert all(call.match(line) or answer.match(line) for line in lines), lines
    assert "fixup_after_prune(model=Sequential, modules={3 item(s)}, graph=DependencyGraph)" in result.stderr


def test_star_import_works_and_advertises_no_phantom_submodule():
    namespace = {}
    exec("from pruning_core import *", namespace)
    assert "DependencyGraph" in namespace and "StateCodec" in namespace and "AttentionLayout" in namespace
    assert "plugins" not in tp.__all__
    assert not hasattr(tp, "plugins")
    assert all(hasattr(tp, name) for name in tp.__all__)


def test_model_schemes_resolve_by_prefix_and_unprefixed_schemes_pass(hub, tmp_path):
    built = []
    hub.register(make_plugin("toy", register_model_schemes=lambda: [tp.ModelScheme(
        "toy", "toy:n", "a toy", resolve=lambda spec: built.append(spec) or tp.ModelSource(mlp(), None, spec))]),
        "toy")
    assert hub.resolve_model_spec("toy:3").spec == "toy:3" and built == ["toy:3"]
    assert hub.resolve_model_spec(str(tmp_path)) is None  # a directory without pruning.json: every scheme passes
    assert "toy" in {s.scheme for s in hub.model_schemes()}
    with pytest.raises(tp.PluginError, match="example 'n:3' must be a spec that starts with 'toy:'"):
        tp.ModelScheme("toy", "n:3", resolve=print)
    with pytest.raises(tp.PluginError, match="resolve must be a callable"):
        tp.ModelScheme("toy", "toy:3")


def test_one_registry_shape_for_lookups():
    hub = _plugins.get_hub()
    assert hub.op_rules().get("aten::no_such_op") is None  # the graph falls back from overload to op name
    with pytest.raises(tp.UnknownNameError, match="Did you mean 'magnitude'"):
        hub.pruners().get("magnitud")

    class MyConv(nn.Conv2d):
        pass

    handlers = hub.handlers()
    assert handlers.lookup(MyConv) is handlers.lookup(nn.Conv2d)  # found through the MRO, then cached
    assert handlers.lookup(nn.Module) is None


@pytest.mark.parametrize("ratio, kept", [(0.3, 12), (0.2, 12), (0.45, 8)])
def test_a_round_to_hint_keeps_the_nearest_multiple(hub, ratio, kept):
    """A plugin says the first layer's width must stay a multiple of 4 (a hidden size by its heads)."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    hub.register(make_plugin("rounds", collect_structure_hints=lambda model: [
        tp.StructureHint(module=model[0], round_to=4)]), "rounds")
    tp.pruner.BasePruner(model, torch.randn(2, 6), pruning_ratio=ratio, ignored_layers=[model[2]]).step()
    assert model[0].out_features == kept  # 16 * 0.7 = 11.2 -> 12; 16 * 0.8 = 12.8 -> 12; 16 * 0.55 = 8.8 -> 8


def test_tracing_contexts_are_entered_around_every_traced_forward_and_exited(hub):
    seen = []

    class Watch:
        def __enter__(self):
            seen.append("enter")

        def __exit__(self, *exc):
            seen.append("exit")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            seen.append("forward")
            return self.b(self.a(x))

    hub.register(make_plugin("watch", tracing_context=lambda model: Watch() if isinstance(model, Net) else None),
                 "watch")
    model = Net()
    tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    assert seen[:3] == ["enter", "forward", "exit"] and seen.count("enter") == seen.count("exit") >= 1
    seen.clear()
    model(torch.randn(2, 4))  # outside tracing nothing is entered
    assert seen == ["forward"]
