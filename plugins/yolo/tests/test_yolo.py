"""Ultralytics YOLOv8 and YOLO11, pruned as ultralytics ships them, still work through its own YOLO wrapper."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import pruning_core as tp  # noqa: E402

SIZE = 320  # smaller than the default 640 to keep the tests fast; nothing depends on it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def build(cfg: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yolo = YOLO(cfg, verbose=False)
    yolo.model.eval()
    return yolo, torch.randn(1, 3, SIZE, SIZE)


def outputs(model, x):
    with torch.no_grad():
        predictions, features = model(x)
    return predictions, features


def shapes(value):
    """Tensor shapes of a nested output, keeping its structure."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: shapes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shapes(v) for v in value]
    return value


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module", params=[("yolov8n.yaml", 0.25), ("yolov8n.yaml", 0.5), ("yolo11n.yaml", 0.25),
                                        ("yolo11n.yaml", 0.5)], ids=lambda p: f"{p[0][:-5]}-{p[1]}")
def pruned(request):
    cfg, ratio = request.param
    yolo, x = build(cfg)
    before = {"params": params(yolo.model), "macs": macs(yolo.model, x), "outputs": outputs(yolo.model, x)}
    tp.pruner.MagnitudePruner(yolo.model, x, tp.importance.MagnitudeImportance(), pruning_ratio=ratio).step()
    yolo.model.eval()
    return cfg, ratio, yolo, x, before


def test_parameters_and_macs_drop_as_expected(pruned):
    _, ratio, yolo, x, before = pruned
    # Channels shrink by `ratio` on both sides of most convolutions: cost goes with (1 - ratio)^2;
    # the kept prediction convolutions and the 3-channel stem keep it a little above that.
    expected = (1 - ratio) ** 2
    for measured in (params(yolo.model) / before["params"], macs(yolo.model, x) / before["macs"]):
        assert expected <= measured <= expected + 0.12, measured


def test_detection_outputs_keep_their_shapes(pruned):
    _, _, yolo, x, before = pruned
    predictions, features = outputs(yolo.model, x)
    assert predictions.shape == before["outputs"][0].shape == (1, 84, 2100)
    assert shapes(features) == shapes(before["outputs"][1])


def test_split_blocks_attributes_follow_the_pruned_widths(pruned):
    _, _, yolo, x, _ = pruned
    blocks = [m for m in yolo.model.modules() if type(m).__name__ in ("C2f", "C3k2", "C2PSA")]
    assert blocks
    for block in blocks:
        assert block.cv1.conv.out_channels == 2 * block.c
    for block in (b for b in blocks if hasattr(b, "forward_split")):
        inputs = torch.randn(1, block.cv1.conv.in_channels, 8, 8)
        with torch.no_grad():  # the export path reads `c`; it must agree with the traced forward
            torch.testing.assert_close(block.forward_split(inputs), block(inputs))
    for attention in (m for m in yolo.model.modules() if type(m).__name__ == "Attention"):
        qkv = attention.qkv.conv.out_channels
        assert qkv == attention.num_heads * (2 * attention.key_dim + attention.head_dim)
        assert attention.proj.conv.out_channels == attention.num_heads * attention.head_dim


def test_predict_through_the_yolo_wrapper(pruned):
    _, _, yolo, _, _ = pruned
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    results = yolo.predict(image, imgsz=SIZE, conf=0.0, verbose=False)
    boxes = results[0].boxes
    assert boxes.data.ndim == 2 and boxes.data.shape[1] == 6 and len(boxes) > 0


def test_save_and_load_round_trips(pruned, tmp_path):
    cfg, _, yolo, x, _ = pruned
    expected = outputs(yolo.model, x)[0]
    tp.save_pruned(yolo.model, str(tmp_path / "pruned"))
    fresh, _ = build(cfg)
    tp.load_pruned(fresh.model, str(tmp_path / "pruned"))
    fresh.model.eval()
    torch.testing.assert_close(outputs(fresh.model, x)[0], expected, rtol=0, atol=0)
    # ultralytics' own checkpoint (pickled by ultralytics) loads back too.
    yolo.save(str(tmp_path / "pruned.pt"))
    reloaded = YOLO(str(tmp_path / "pruned.pt"))
    reloaded.model.float().eval()
    assert params(reloaded.model) == params(yolo.model)
    torch.testing.assert_close(outputs(reloaded.model, x)[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cfg", ["yolov8s.yaml", "yolo11s.yaml"])
def test_s_variants_prune_and_predict(cfg):
    yolo, x = build(cfg)
    before_params, before = params(yolo.model), outputs(yolo.model, x)
    tp.pruner.MagnitudePruner(yolo.model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5).step()
    yolo.model.eval()
    assert shapes(outputs(yolo.model, x)) == shapes(before)
    assert 0.25 <= params(yolo.model) / before_params <= 0.25 + 0.12
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    assert yolo.predict(image, imgsz=SIZE, conf=0.0, verbose=False)[0].boxes.data.shape[1] == 6


def test_onnx_export(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    yolo, x = build("yolo11n.yaml")
    tp.pruner.MagnitudePruner(yolo.model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5).step()
    path = yolo.export(format="onnx", imgsz=SIZE, simplify=False, verbose=False)
    import onnx

    graph = onnx.load(path).graph
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 84, 2100]


def test_readme_yolo_section_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    section = text.split("## Ultralytics YOLO", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (YOLO section)", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["results"][0].boxes.data.shape[1] == 6
    assert (tmp_path / "yolo11n-pruned" / "pruning.json").exists()
    assert os.path.exists(namespace["onnx_path"])


def test_yolo_model_spec_on_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pruning_core", "prune", "yolo:yolov8n.yaml", "--ratio", "0.25",
                             "--output", str(tmp_path / "out"), "--json", "--no-latency"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"]
    assert report["after"]["params"] < 0.75 * report["before"]["params"]


def test_a_yolo_spec_that_is_not_a_yaml_is_refused():
    from pruning_core_yolo.sources import resolve

    with pytest.raises(tp.ConfigurationError, match="yolo11n.yaml"):
        resolve("yolo:yolo11n.pt")


def test_attention_handler_refuses_unequal_heads():
    yolo, _ = build("yolo11n.yaml")
    attention = next(m for m in yolo.model.modules() if type(m).__name__ == "Attention")
    from pruning_core_yolo.attention import prune_psa_attention_handler

    with pytest.raises(tp.InvalidIndicesError, match="same number"):
        prune_psa_attention_handler.prune_out_channels(attention, [0, 1])  # both in head 0
    width = attention.proj.conv.out_channels
    prune_psa_attention_handler.prune_out_channels(attention, [0, attention.head_dim])  # one in each head
    assert attention.proj.conv.out_channels == width - 2
    x = torch.randn(1, width - 2, 4, 4)
    with torch.no_grad():
        assert attention(x).shape == x.shape


def test_plugin_imports_without_ultralytics():
    code = ("import sys, pruning_core, pruning_core_yolo.plugin; "
            "assert 'ultralytics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_installed_ultralytics_is_in_the_pinned_and_tested_range():
    from importlib import metadata

    from pruning_core_yolo.version_check import TESTED, outside_tested_range

    requirement = next(r for r in metadata.requires("pruning-core-yolo") if r.startswith("ultralytics"))
    assert set(requirement.replace(" ", "")[len("ultralytics"):].split(",")) == set(TESTED)
    assert not outside_tested_range(metadata.version("ultralytics"))
    assert outside_tested_range("8.5.0") and outside_tested_range("8.3.99") and not outside_tested_range("8.4.0")


def _tiny_dataset(root, classes=80):
    from PIL import Image

    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            pixels = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.jpg")
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    names = "".join(f"  {i}: class{i}\n" for i in range(classes))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return root / "data.yaml"


def test_fine_tuning_trains_the_pruned_model(tmp_path, monkeypatch):
    from pruning_core_yolo import pruned_trainer

    monkeypatch.chdir(tmp_path)
    data = _tiny_dataset(tmp_path / "data")
    yolo, _ = build("yolov8n.yaml")
    tp.pruner.MagnitudePruner(yolo.model, torch.randn(1, 3, 64, 64), tp.importance.MagnitudeImportance(),
                              pruning_ratio=0.5).step()
    pruned_params = params(yolo.model)
    before = {k: v.clone() for k, v in yolo.model.state_dict().items()}
    yolo.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", amp=False,
               project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False,
               trainer=pruned_trainer(yolo))
    # Stock yolo.train() would rebuild the unpruned architecture from the YAML (3.0M parameters).
    assert params(yolo.model) == pruned_params
    changed = [k for k, v in yolo.model.state_dict().items() if k in before and v.shape == before[k].shape
               and v.is_floating_point() and not torch.equal(v.float(), before[k].float())]
    assert changed, "training did not update the pruned weights"


def test_fine_tuning_refuses_data_with_another_class_count(tmp_path, monkeypatch):
    from pruning_core_yolo import pruned_trainer

    monkeypatch.chdir(tmp_path)
    data = _tiny_dataset(tmp_path / "data", classes=1)
    yolo, _ = build("yolov8n.yaml")  # 80 classes
    with pytest.raises(tp.ConfigurationError, match="predicts 80 classes but the dataset .* has 1"):
        yolo.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", amp=False,
                   project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False,
                   trainer=pruned_trainer(yolo))
