"""Every CLI subcommand, run in a subprocess: exit codes, reports and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

import pruning_core as tp


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "pruning_core", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **(env or {})), cwd=cwd)


def test_prune_torchvision_model_text_report(tmp_path):
    out = tmp_path / "r18"
    result = cli("prune", "torchvision:resnet18", "--ratio", "0.5", "--output", str(out), "--no-latency")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "params      11.69M ->     3.06M" in text
    assert "conv1" in text and "out 64->32" in text
    assert "kept     fc" in text
    assert "reloaded with weights_only=True: identical outputs" in text
    assert "\r" not in result.stderr  # no progress bars without a terminal
    assert (out / "weights.safetensors").exists() and (out / "pruning.json").exists()


def test_prune_json_report_and_reload_in_python(tmp_path):
    out = tmp_path / "mnv2.pt"
    result = cli("prune", "torchvision:mobilenet_v2", "--ratio", "0.3", "--importance", "l1", "--global",
                 "--round-to", "8", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"] and report["reload_check"]["max_abs_diff"] == 0.0
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["before"]["latency_ms"] > 0 and report["after"]["latency_ms"] > 0
    assert all((row["out"][1] % 8 == 0) or row["out"][1] == row["out"][0] for row in report["changed_layers"]
               if row["type"] == "Conv2d")
    fresh = torchvision.models.mobilenet_v2().eval()
    payload = torch.load(out, weights_only=True)
    assert payload["model_spec"] == "torchvision:mobilenet_v2"
    tp.load_state_dict(fresh, payload)
    assert tp.utils.count_params(fresh) == report["after"]["params"]


MODEL_FILE = """
import torch
from torch import nn

def build():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.randn(2, 8)
"""


@pytest.mark.parametrize("importance", ["activation", "taylor", "hessian"])
def test_prune_file_spec_with_calibration_and_steps(tmp_path, importance):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent(MODEL_FILE))
    out = tmp_path / "pruned"
    result = cli("prune", f"file:{tmp_path / 'mymodel.py'}:build", "--ratio", "0.5", "--importance", importance,
                 "--calib", "3", "--iterative-steps", "2", "--ignore", "4", "--output", str(out), "--json",
                 "--no-latency")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    widths = {row["name"]: row["out"] for row in report["changed_layers"]}
    assert widths["0"] == [32, 16] and widths["2"] == [32, 16]
    assert "4" in report["kept"]


def test_inspect_lists_groups_and_reasons():
    result = cli("inspect", "torchvision:resnet18", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    roots = {g["root"]: g for g in info["groups"]}
    assert roots["conv1"]["channels"] == 64 and len(roots["conv1"]["members"]) == 10
    assert info["kept_reasons"]["model output"] >= 1
    text = cli("inspect", "torchvision:resnet18", "--members")
    assert text.returncode == 0 and "prune_in_channels    layer1.0.conv1" in text.stdout


def test_inspect_a_saved_pruned_model(tmp_path):
    out = tmp_path / "saved"
    assert cli("prune", "torchvision:resnet18", "--ratio", "0.25", "--output", str(out), "--no-latency").returncode == 0
    result = cli("inspect", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {g["root"]: g["channels"] for g in info["groups"]}["conv1"] == 48


def test_plugins_subcommand():
    result = cli("plugins", "--all")
    assert result.returncode == 0 and "builtin.conv" in result.stdout and "pruning-core-hf" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["prune", "nosuch:model", "--ratio", "0.5", "-o", "x"], "unknown model spec 'nosuch:model'. Known schemes:"),
    (["prune", "torchvision:resnet18", "--ratio", "1.5", "-o", "x", "--no-latency"], "pruning_ratio must be in"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--ignore", "nolayer", "-o", "x"], "nolayer"),
    (["prune", "torchvision:resnt18", "--ratio", "0.5", "-o", "x"], "did you mean resnet18"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "l7", "-o", "x"], "Did you mean"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message, tmp_path):
    result = cli(*args, cwd=str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_plugin_scheme_names_the_extra(tmp_path):
    result = cli("prune", "timm:resnet18", "--ratio", "0.5", "-o", "x", env={"PRUNING_CORE_PLUGINS": "none"},
                 cwd=str(tmp_path))
    assert result.returncode == 2
    assert 'pip install "pruning-core[timm]"' in result.stderr


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "pruning-core")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("pruning-core ")


def test_progress_bars_can_be_forced_on(tmp_path):
    result = cli("prune", "torchvision:resnet18", "--ratio", "0.25", "--output", str(tmp_path / "o"),
                 "--iterative-steps", "2", env={"PRUNING_CORE_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr
    assert "pruning steps" in result.stderr and "latency" in result.stderr and "2/2" in result.stderr
