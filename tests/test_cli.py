"""The command line: reports, saving and reloading, progress, and every bad input (exit 2, no traceback).

Whole runs go through a subprocess (``python -m pruning_core``); bad-input cases call
``pruning_core.cli.main`` in-process, which is the same code without the start-up cost.
"""

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
from pruning_core import cli as cli_module

SMALL = ["--input-shape", "1,3,64,64"]


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "pruning_core", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **(env or {})), cwd=cwd)


def main(capsys, *args):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    code = cli_module.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


MODEL_FILE = """
import torch
from torch import nn

def build():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.randn(2, 8)

class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("Picky only takes batches of one")
        return self.fc(x)

def picky():
    return Picky(), torch.randn(2, 8)

def broken():
    raise ValueError("the factory itself failed")
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


# -- whole runs ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_prune_torchvision_model_text_report(tmp_path):
    out = tmp_path / "r18"
    result = cli("prune", "torchvision:resnet18", "--ratio", "0.5", "--output", str(out), "--no-latency", *SMALL)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "params      11.69M ->     3.06M" in text
    assert "conv1" in text and "out 64->32" in text
    assert "kept     fc" in text
    assert "reloaded with weights_only=True: identical outputs" in text
    assert "\r" not in result.stderr  # no progress bars without a terminal...
    phases = [line.split(":")[0] for line in result.stderr.splitlines() if line.endswith(" s") or " s (" in line]
    assert phases == ["loading", "tracing", "pruning", "saving", "verification"]  # ...one line per phase
    assert (out / "weights.safetensors").exists() and (out / "pruning.json").exists()


@pytest.mark.slow
def test_prune_json_report_latency_and_reload_in_python(tmp_path):
    out = tmp_path / "mnv2.pt"
    result = cli("prune", "torchvision:mobilenet_v2", "--ratio", "0.3", "--importance", "l1", "--global",
                 "--round-to", "8", "--output", str(out), "--json", "--latency-budget", "3", *SMALL)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"] and report["reload_check"]["max_abs_diff"] == 0.0
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["macs"] < report["before"]["macs"]
    latency = report["latency"]
    assert latency["rounds"] >= 3 and latency["seconds"] < 3 + 2
    for side in ("original", "pruned"):
        low, high = latency[side]["wall_iqr_ms"]
        assert 0 < low <= latency[side]["wall_ms"] <= high and latency[side]["cpu_ms"] > 0
    assert latency["wall_verdict"] in ("faster", "slower", "inconclusive")
    assert report["before"]["latency_ms"] == latency["original"]["wall_ms"]
    assert all((row["out"][1] % 8 == 0) or row["out"][1] == row["out"][0] for row in report["changed_layers"]
               if row["type"] == "Conv2d")
    fresh = torchvision.models.mobilenet_v2().eval()
    payload = torch.load(out, weights_only=True)
    assert payload["model_spec"] == "torchvision:mobilenet_v2"
    tp.load_state_dict(fresh, payload)
    assert tp.utils.count_params(fresh) == report["after"]["params"]


@pytest.mark.parametrize("importance", ["activation", "taylor", "hessian", "obdc"])
def test_prune_file_spec_with_calibration_and_steps(tmp_path, model_file, importance, capsys):
    out = tmp_path / "pruned"
    code, stdout, stderr = main(capsys, "prune", f"file:{model_file}:build", "--ratio", "0.5", "--importance",
                                importance, "--calib", "3", "--iterative-steps", "2", "--ignore", "4", "--output",
                                str(out), "--json", "--no-latency")
    assert code == 0, stderr
    report = json.loads(stdout)
    widths = {row["name"]: row["out"] for row in report["changed_layers"]}
    assert widths["0"] == [32, 16] and widths["2"] == [32, 16]
    assert "4" in report["kept"]
    assert "scoring 1/2: " in stderr and "pruning 2/2: " in stderr


def test_calibration_file_is_split_into_batches(tmp_path, model_file, capsys):
    torch.save(torch.randn(6, 8), tmp_path / "calib.pt")
    code, stdout, stderr = main(capsys, "prune", f"file:{model_file}:build", "--ratio", "0.25", "--importance",
                                "taylor", "--calib", str(tmp_path / "calib.pt"), "-o", str(tmp_path / "o"),
                                "--no-latency")
    assert code == 0, stderr
    assert "scoring: " in stderr and "(3/3)" in stderr  # 6 samples in batches of 2



SEEDED_FILE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.randn(2, 8)
"""


def test_calibrated_criterion_and_compensation_from_the_command_line(tmp_path, capsys):
    # --compensate lstsq refits the layers that read the removed channels: with the same kept channels,
    # the pruned model is closer to the dense one on the calibration data than without compensation.
    (tmp_path / "seeded.py").write_text(SEEDED_FILE)
    spec = f"file:{tmp_path / 'seeded.py'}:build"
    calib = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    torch.save(calib, tmp_path / "calib.pt")
    errors, last_weights = {}, {}
    dense = build_seeded(tmp_path)
    for method in ("none", "lstsq"):
        out = tmp_path / method
        code, stdout, stderr = main(capsys, "prune", spec, "--ratio", "0.5", "--importance", "wanda", "--compensate",
                                    method, "--calib", str(tmp_path / "calib.pt"), "-o", str(out), "--no-latency",
                                    "--json")
        assert code == 0, stderr
        assert json.loads(stdout)["reload_check"]["ok"]
        pruned = tp.load_pruned(build_seeded(tmp_path), str(out))
        assert pruned[2].in_features == 16 and pruned[4].in_features == 16
        with torch.no_grad():
            errors[method] = (pruned(calib) - dense(calib)).pow(2).mean().item()
        last_weights[method] = pruned[4].weight.detach().clone()
    assert not torch.equal(last_weights["none"], last_weights["lstsq"])
    assert errors["lstsq"] < errors["none"]


def build_seeded(tmp_path):
    namespace = {}
    exec(compile(SEEDED_FILE, str(tmp_path / "seeded.py"), "exec"), namespace)
    return namespace["build"]()[0].eval()

@pytest.mark.slow
def test_file_specs_are_saved_absolute_so_inspect_works_from_elsewhere(tmp_path, model_file, capsys):
    out = tmp_path / "saved"
    code, _, stderr = main(capsys, "prune", f"file:{os.path.relpath(model_file)}:build", "--ratio", "0.5", "-o",
                           str(out), "--no-latency")
    assert code == 0, stderr
    record = json.loads((out / "pruning.json").read_text())
    assert record["model_spec"] == f"file:{model_file}:build"  # absolute
    result = cli("inspect", str(out), "--json", cwd="/")
    assert result.returncode == 0, result.stderr
    assert {g["root"]: g["channels"] for g in json.loads(result.stdout)["groups"]}["0"] == 16


def test_a_pt_file_written_by_prune_is_a_model_spec(tmp_path, model_file, capsys):
    first = tmp_path / "once.pt"
    assert main(capsys, "prune", f"file:{model_file}:build", "--ratio", "0.5", "-o", str(first),
                "--no-latency")[0] == 0
    code, stdout, stderr = main(capsys, "prune", str(first), "--ratio", "0.5", "-o", str(tmp_path / "twice"),
                                "--no-latency", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["before"]["params"] == 8 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4  # loaded pruned, pruned again
    assert report["reload_check"]["ok"]
    code, stdout, _ = main(capsys, "inspect", str(first), "--json")
    assert code == 0 and json.loads(stdout)["groups"][0]["channels"] == 16


def test_inspect_lists_groups_and_kept_channels_by_layer_name(capsys):
    code, stdout, stderr = main(capsys, "inspect", "torchvision:resnet18", "--json", *SMALL)
    assert code == 0, stderr
    info = json.loads(stdout)
    roots = {g["root"]: g for g in info["groups"]}
    assert roots["conv1"]["channels"] == 64
    layers = {(layer["name"], layer["loses"]) for layer in roots["conv1"]["layers"]}
    assert ("layer1.0.conv1", "input channels") in layers and ("bn1", "output channels") in layers
    kept = {row["note"]: row for row in info["kept"]}
    assert kept["model output"]["layers"] == ["fc (output channels)"]
    assert kept["model input"]["layers"] == ["conv1 (input channels)"]
    code, text, _ = main(capsys, "inspect", "torchvision:resnet18", "--layers", *SMALL)
    assert code == 0
    assert "layer1.0.conv1" in text and "input channels" in text
    assert "the model's output (its shape stays, so a classifier keeps its classes):\n      fc (output channels)" in text
    assert "slots" not in text and "members" not in text


@pytest.mark.slow
def test_inspect_a_saved_pruned_model(tmp_path):
    out = tmp_path / "saved"
    assert cli("prune", "torchvision:resnet18", "--ratio", "0.25", "--output", str(out), "--no-latency",
               *SMALL).returncode == 0
    result = cli("inspect", str(out), "--json", *SMALL)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {g["root"]: g["channels"] for g in info["groups"]}["conv1"] == 48


def test_plugins_all_lists_criteria_and_pruners_by_name(capsys):
    code, stdout, _ = main(capsys, "plugins", "--all")
    assert code == 0 and "builtin.conv" in stdout and "pruning-core-hf" in stdout
    criteria = stdout.split("importance criteria (--importance NAME):")[1].split("pruners (")[0]
    names = {line.split()[0] for line in criteria.strip().splitlines()}
    assert names == set(tp.importance.names()) and {"l2", "taylor", "obdc"} <= names
    assert "group_norm" in stdout.split("pruners (")[1]
    code, stdout, _ = main(capsys, "plugins", "--all", "--json")
    listing = json.loads(stdout)
    assert {row["name"] for row in listing["pruners"]} == set(tp.pruner.names())
    # The --importance help points at this listing.
    help_text = cli_module.build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    assert "pruning-core plugins --all" in " ".join(help_text.split())


@pytest.mark.slow
def test_progress_bars_per_phase_can_be_forced_on(tmp_path, model_file):
    result = cli("prune", f"file:{model_file}:build", "--ratio", "0.25", "--output", str(tmp_path / "o"),
                 "--iterative-steps", "2", "--latency-budget", "1", env={"PRUNING_CORE_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr
    bars = result.stderr.replace("\r", "\n")
    for name in ("loading", "tracing", "pruning 1/2", "pruning 2/2", "saving", "verification", "latency"):
        assert name in bars, name
    assert "[########################]" in bars  # the latency rounds, as a filled bar


@pytest.mark.slow
def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "pruning-core")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("pruning-core ")


# -- bad input: exit 2, a message, no traceback, no work first ---------------------------------------
@pytest.fixture
def no_building(monkeypatch):
    """Fail the test if a model is built: bad arguments must be caught before that."""
    from pruning_core.cli import sources

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(sources, "_built", refuse)
    monkeypatch.setattr(sources, "_from_pt", refuse)


@pytest.mark.parametrize("args,message", [
    (["prune", "torchvision:resnet18", "--ratio", "1.5", "-o", "x"], "--ratio must be in [0, 1)"),
    (["prune", "torchvision:resnet18", "--ratio", "-0.1", "-o", "x"], "--ratio must be in [0, 1)"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--iterative-steps", "0", "-o", "x"], "--iterative-steps"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--round-to", "0", "-o", "x"], "--round-to"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "l7", "-o", "x"], "Did you mean"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "taylor", "--calib", "missing.pt", "-o",
      "x"], "--calib missing.pt: no such file"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--calib", "4", "-o", "x"], "does not use it"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--calib", "corpus.txt", "--importance", "wanda", "-o",
      "x"], "--calib corpus.txt: no such file"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "--input-shape", "1,a,3", "-o", "x"], "--input-shape must"),
    (["prune", "--ignore", "fc", "torchvision:resnet18", "--ratio", "0.5", "-o", "x"],
     "--ignore takes every name up to the next option, so it also took the model 'torchvision:resnet18'"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "-o", "afile"], "--output afile exists and is a file"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "-o", "afile/below.pt"], "afile is a file, so nothing"),
    (["prune", "torchvision:resnet18", "--ratio", "0.5", "-o", "adir.pt"], "is an existing directory"),
    (["prune", "hf:hfdir", "--ratio", "0.5", "--input-shape", "1,8", "-o", "x"], "--input-shape does not apply to hf:"),
    (["prune", "hf:emptydir", "--ratio", "0.5", "-o", "x"], "emptydir has no config.json"),
    (["prune", "hf:nothere", "--ratio", "0.5", "-o", "x"], "nothere is not a directory"),
    (["prune", "emptydir", "--ratio", "0.5", "-o", "x"], "emptydir is a directory but not a model saved by"),
    (["prune", "notes", "--ratio", "0.5", "-o", "x"], "found notes.txt"),
    (["prune", "hfdir", "--ratio", "0.5", "-o", "x"], "looks like a Hugging Face transformers directory (it has "
                                                      "config.json); give it as hf:hfdir"),
    (["prune", "no/such/dir", "--ratio", "0.5", "-o", "x"], "no/such/dir does not exist"),
    (["prune", "gone.pt", "--ratio", "0.5", "-o", "x"], "gone.pt does not exist"),
    (["prune", "file:nothere.py:build", "--ratio", "0.5", "-o", "x"], "nothere.py does not exist"),
    (["prune", "hfdir", "--ratio", "0.5", "-o", "hfdir"], "--output hfdir is the model being pruned"),
    (["inspect", "emptydir"], "emptydir is a directory but not a model saved by"),
])
def test_bad_input_is_refused_before_any_work(args, message, tmp_path, monkeypatch, capsys, no_building):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.pt").mkdir()
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("x")
    (tmp_path / "hfdir").mkdir()
    (tmp_path / "hfdir" / "config.json").write_text("{}")
    code, _, stderr = main(capsys, *args)
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's read-only /proc")
def test_an_unwritable_output_is_refused(capsys, no_building):
    code, _, stderr = main(capsys, "prune", "torchvision:resnet18", "--ratio", "0.5", "-o", "/proc/pc-test/out")
    assert code == 2 and "cannot write in /proc" in stderr


@pytest.mark.parametrize("factory,message", [
    ("picky", "(Picky) fails on its example inputs, a tensor of shape 2x8:\n"),
    ("broken", "building the model file:"),
])
def test_a_failing_user_model_is_named_with_the_users_error_last(model_file, factory, message, capsys):
    code, _, stderr = main(capsys, "prune", f"file:{model_file}:{factory}", "--ratio", "0.5", "-o", "x")
    assert code == 2
    assert message in stderr and f"file:{model_file}:{factory}" in stderr
    assert f'File "{model_file}"' in stderr  # the user's frame...
    last = stderr.strip().splitlines()[-1]
    assert last in ("RuntimeError: Picky only takes batches of one", "ValueError: the factory itself failed")
    assert "pruning_core" not in stderr.replace(f"file:{model_file}", "")  # ...and none of ours


def test_input_shape_that_does_not_fit_the_model(capsys):
    code, _, stderr = main(capsys, "prune", "torchvision:resnet18", "--ratio", "0.5", "--input-shape", "1,3,32",
                           "-o", "x")
    assert code == 2 and "a tensor of shape 1x3x32 (given by --input-shape)" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_unknown_scheme_and_missing_plugin(tmp_path):
    result = cli("prune", "nosuch:model", "--ratio", "0.5", "-o", "x", cwd=str(tmp_path))
    assert result.returncode == 2 and "unknown model spec 'nosuch:model'. Known schemes:" in result.stderr
    result = cli("prune", "timm:resnet18", "--ratio", "0.5", "-o", "x", env={"PRUNING_CORE_PLUGINS": "none"},
                 cwd=str(tmp_path))
    assert result.returncode == 2
    assert 'pip install "pruning-core[timm]"' in result.stderr


def test_reload_mismatch_exits_1_and_internal_errors_3(tmp_path, model_file, monkeypatch, capsys):
    from pruning_core.cli import saving

    monkeypatch.setattr(saving, "_compare", lambda got, expected: {"weights_only": True, "max_abs_diff": 1.0,
                                                                    "ok": False})
    code, stdout, _ = main(capsys, "prune", f"file:{model_file}:build", "--ratio", "0.5", "-o", str(tmp_path / "a"),
                           "--no-latency")
    assert code == 1 and "MISMATCH" in stdout

    def crash(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(saving, "save", crash)
    code, _, stderr = main(capsys, "prune", f"file:{model_file}:build", "--ratio", "0.5", "-o", str(tmp_path / "b"),
                           "--no-latency")
    assert code == 3 and "Traceback" in stderr and "internal error" in stderr


# -- Hugging Face directories --------------------------------------------------------------------
def _hf_source(directory):
    """A tiny random LLaMA with a word-level tokenizer, saved as transformers saves models."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["[PAD]", "[UNK]"] + "pruning removes whole channels . the model runs fast".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)


STOCK_LOAD = """
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
inputs = tokenizer(["the model runs fast"], return_tensors="pt")
with torch.no_grad():
    torch.save(model(**inputs).logits, sys.argv[2])
assert not any(m.startswith("pruning_core") for m in sys.modules)
"""


@pytest.mark.slow
def test_hf_prune_writes_a_directory_stock_transformers_loads(tmp_path):
    _hf_source(tmp_path / "src")
    out = tmp_path / "out"
    result = cli("prune", f"hf:{tmp_path / 'src'}", "--ratio", "0.5", "-o", str(out), "--no-latency", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["saved"]["format"] == "transformers" and report["saved"]["stock_loadable"] is True
    assert set(report["saved"]["copied"]) == {"tokenizer.json", "tokenizer_config.json"}
    assert report["reload_check"]["ok"]
    stock = subprocess.run([sys.executable, "-c", STOCK_LOAD, str(out), str(tmp_path / "logits.pt")],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert stock.returncode == 0, stock.stderr[-2000:]
    import pruning_core_hf
    import transformers

    ours = pruning_core_hf.from_pretrained(str(out))
    assert ours.model.layers[0].mlp.gate_proj.out_features == 64  # really the pruned model
    inputs = transformers.AutoTokenizer.from_pretrained(str(out))(["the model runs fast"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), ours(**inputs).logits)


@pytest.mark.slow
def test_hf_non_uniform_prune_and_the_plain_save_warning(tmp_path):
    import pruning_core_hf

    _hf_source(tmp_path / "src")
    out = tmp_path / "out"
    result = cli("prune", f"hf:{tmp_path / 'src'}", "--ratio", "0.5", "--global", "-o", str(out), "--no-latency")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"so load it with pruning_core_hf.from_pretrained('{out}')" in result.stdout
    model = pruning_core_hf.from_pretrained(str(out))
    widths = {layer.mlp.gate_proj.out_features for layer in model.model.layers}
    assert len(widths) == 2
    with pytest.warns(tp.pruner.PruningWarning, match=r"pruning_core_hf.save_pretrained\(model, ") as caught:
        model.save_pretrained(str(tmp_path / "plain"))
    assert caught[0].filename == __file__  # points at the caller, not at the library
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.pruner.PruningWarning)
        pruning_core_hf.save_pretrained(model, str(tmp_path / "ours"))  # the right way: no warning
    # The saved directory is a model spec again (hf:), inspectable from anywhere.
    inspected = cli("inspect", f"hf:{out}", "--json", cwd="/")
    assert inspected.returncode == 0, inspected.stderr[-2000:]


@pytest.mark.slow
def test_hf_text_calibration_with_the_models_tokenizer(tmp_path):
    # --calib corpus.txt is tokenized with the model's own tokenizer, one sample per line.
    _hf_source(tmp_path / "src")
    (tmp_path / "corpus.txt").write_text("pruning removes whole channels .\n\nthe model runs fast\n" * 6)
    out = tmp_path / "out"
    result = cli("prune", f"hf:{tmp_path / 'src'}", "--ratio", "0.5", "--importance", "wanda", "--compensate",
                 "bias", "--calib", str(tmp_path / "corpus.txt"), "-o", str(out), "--no-latency", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"] and report["after"]["params"] < report["before"]["params"]
    # bias compensation gave the bias-free LLaMA projections biases: only the plugin's format can say so
    assert report["saved"]["stock_loadable"] is False and (out / "pruning.json").exists()
    plain = cli("prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "wanda", "--calib",
                str(tmp_path / "corpus.txt"), "-o", str(tmp_path / "r"), "--no-latency")
    assert plain.returncode == 2 and "text calibration needs a model with a tokenizer" in plain.stderr
