"""tp.state_dict keeps the user's own attributes on request, and a core install (no numpy) can save."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest
import torch
from torch import nn

import pruning_core as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _pruned():
    model = _net()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 5]).prune()
    model.customized_value = 8                      # the user's own attributes, as in Torch-Pruning's test
    model[2].labels = ("cat", "dog", "owl")
    model[0].meta = {"source": "digits", "epochs": [1, 2]}
    return model


def _reload(payload, tmp_path):
    torch.save(payload, tmp_path / "p.pth")
    fresh = _net()
    tp.load_state_dict(fresh, torch.load(tmp_path / "p.pth", weights_only=True))
    return fresh


def test_default_keeps_only_what_pruning_changed(tmp_path):
    fresh = _reload(tp.state_dict(_pruned()), tmp_path)
    assert fresh[0].out_features == 6 and fresh[2].in_features == 6
    assert not hasattr(fresh, "customized_value") and not hasattr(fresh[2], "labels")


def test_all_keeps_every_plain_attribute(tmp_path):
    model = _pruned()
    fresh = _reload(tp.state_dict(model, attributes="all"), tmp_path)
    assert fresh.customized_value == 8 and fresh[2].labels == ("cat", "dog", "owl")
    assert not hasattr(fresh[0], "meta")  # dicts are kept only when named
    assert fresh[0].out_features == 6
    torch.testing.assert_close(fresh(torch.ones(1, 4)), model(torch.ones(1, 4)))
    # Saved again with the default, the loaded copy keeps what it was given.
    again = _reload(tp.state_dict(fresh), tmp_path)
    assert again.customized_value == 8 and again[2].labels == ("cat", "dog", "owl")


def test_a_list_keeps_those_names_only(tmp_path):
    fresh = _reload(tp.state_dict(_pruned(), attributes=["meta", "customized_value"]), tmp_path)
    assert fresh.customized_value == 8 and fresh[0].meta == {"source": "digits", "epochs": [1, 2]}
    assert not hasattr(fresh[2], "labels")


def test_bad_attribute_requests_are_refused():
    model = _pruned()
    with pytest.raises(tp.ConfigurationError, match="no_such_attr"):
        tp.state_dict(model, attributes=["no_such_attr"])
    model[0].scale_fn = lambda x: x
    with pytest.raises(tp.ConfigurationError, match="'scale_fn' of module '0' is a function, not plain data"):
        tp.state_dict(model, attributes=["scale_fn"])
    with pytest.raises(tp.ConfigurationError, match='"all"'):
        tp.state_dict(model, attributes="everything")


def test_save_pruned_onto_an_existing_file_is_a_clear_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    with pytest.raises(tp.ConfigurationError, match="exists and is a file"):
        tp.save_pruned(_pruned(), str(target))
    assert target.read_text() == "mine"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool,
                                   torch.uint8])
def test_safetensors_written_without_numpy_read_back_by_safetensors(dtype, tmp_path):
    from safetensors.torch import load_file

    from pruning_core.serialization.attributes import write_safetensors

    tensors = {"b.weight": (torch.randn(3, 5) * 10).to(dtype), "a": torch.zeros(0, 4, dtype=dtype),
               "c.bias": (torch.arange(7) % 2).to(dtype)}
    write_safetensors(tensors, str(tmp_path / "w.safetensors"))
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == dtype and torch.equal(loaded[name], tensor)


@pytest.mark.slow
def test_a_core_install_without_numpy_can_save_and_load(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["numpy"] = None  # "import numpy" fails, as on an install of torch, pluggy, safetensors
        import warnings; warnings.simplefilter("ignore")
        import torch
        from torch import nn
        import pruning_core as tp
        def net():
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        model = net()
        DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
        DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1, 2]).prune()
        torch.save(tp.state_dict(model), {str(tmp_path / 'p.pth')!r})
        tp.save_pruned(model, {str(tmp_path / 'dir')!r})
        a, b = net(), net()
        tp.load_state_dict(a, torch.load({str(tmp_path / 'p.pth')!r}, weights_only=True))
        tp.load_pruned(b, {str(tmp_path / 'dir')!r})
        x = torch.randn(2, 4)
        assert torch.equal(a(x), model(x)) and torch.equal(b(x), model(x))
        print("saved and loaded without numpy")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "saved and loaded without numpy" in result.stdout


def test_safetensors_is_a_core_dependency():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    names = [dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]]
    assert "safetensors" in names and "numpy" not in names
