"""Saving pruned models without pickled code, and loading them back exactly; bad files fail cleanly."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
import torchvision

import pruning_core as tp
from pruning_core.testing.oracle import run


def _pruned(name, size=224, ratio=0.5):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, size, size)
    tp.pruner.BasePruner(model, x, pruning_ratio=ratio).step()
    return model, x


def _fresh(name):
    return torchvision.models.get_model(name).eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16"])
def test_round_trip_through_both_forms_with_weights_only(name, tmp_path):
    model, x = _pruned(name)
    expected = run(model, x)
    # torch.save form, loaded with weights_only=True: no code is unpickled.
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = _fresh(name)
    tp.load_state_dict(fresh, torch.load(buffer, weights_only=True))
    assert torch.equal(run(fresh, x), expected)
    # safetensors + JSON form.
    tp.save_pruned(model, str(tmp_path / "saved"), model_spec=f"torchvision:{name}")
    record = json.loads((tmp_path / "saved" / "pruning.json").read_text())
    assert record["format"] == "pruning_core.pruned/1" and record["model_spec"] == f"torchvision:{name}"
    assert any(entry["removed"] for entry in record["structure"].values())
    fresh = _fresh(name)
    tp.load_pruned(fresh, str(tmp_path / "saved"))
    assert torch.equal(run(fresh, x), expected)


def test_record_lists_lost_channels_and_changed_attributes():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9]).prune()
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0]).prune()  # original channel 0
    entry = tp.state_dict(model)["structure"]["conv1"]
    assert entry["removed"]["out"] == [0, 2, 6, 9]
    assert entry["attrs"] == {"out_channels": 60}
    assert entry["shapes"] == {"weight": [60, 3, 7, 7]}
    assert tp.state_dict(model)["structure"]["layer1.0.conv1"]["removed"]["in"] == [0, 2, 6, 9]


def test_a_small_transformers_model_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 100, (2, 7))
    tp.pruner.BasePruner(model, {"input_ids": ids}, pruning_ratio=0.5).step()
    expected = model(input_ids=ids).logits
    tp.save_pruned(model, str(tmp_path / "bert"))
    fresh = transformers.BertForSequenceClassification(config).eval()
    tp.load_pruned(fresh, str(tmp_path / "bert"))
    assert torch.equal(fresh(input_ids=ids).logits, expected)
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = transformers.BertForSequenceClassification(config).eval()
    tp.load_state_dict(fresh, torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(input_ids=ids).logits, expected)


def test_whole_model_pickling_still_works(tmp_path):
    model, x = _pruned("resnet18", 64)
    path = tmp_path / "model.pth"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert torch.equal(run(loaded, x), run(model, x))


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory):
    model, x = _pruned("resnet18", 64)
    directory = str(tmp_path_factory.mktemp("saved") / "resnet18")
    tp.save_pruned(model, directory, model_spec="torchvision:resnet18")
    return directory


def _copy(directory, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def _rewrite(target, record):
    """Write an edited record with a valid checksum, as a different writer would: deeper checks must catch it."""
    record["record_sha256"] = tp.serialization._record_digest(record)
    (target / "pruning.json").write_text(json.dumps(record))


def test_any_edit_of_the_record_is_detected(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    record = json.loads((target / "pruning.json").read_text())
    record["structure"]["conv1"]["removed"]["out"] = [1]
    (target / "pruning.json").write_text(json.dumps(record))
    _assert_unchanged_after_error(target, "modified after it was saved", tmp_path)


def _assert_unchanged_after_error(target, match, tmp_path):
    fresh = _fresh("resnet18")
    before = _state(fresh)
    with pytest.raises(tp.SerializationError, match=match):
        tp.load_pruned(fresh, str(target))
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert fresh.conv1.out_channels == 64


def test_truncated_weights_file(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    weights = target / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _assert_unchanged_after_error(target, "truncated, modified or come from another save", tmp_path)


def test_truncated_record(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    record = target / "pruning.json"
    record.write_text(record.read_text()[:200])
    _assert_unchanged_after_error(target, "not valid JSON", tmp_path)


def test_tampered_record_shape(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    record = json.loads((target / "pruning.json").read_text())
    record["structure"]["conv1"]["shapes"]["weight"][0] = 7
    _rewrite(target, record)
    _assert_unchanged_after_error(target, "weights do not match|could not load", tmp_path)


def test_tampered_record_with_code_is_refused(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    record = json.loads((target / "pruning.json").read_text())
    record["structure"]["conv1"]["shapes"]["weight"] = "__import__('os').system('echo pwned')"
    _rewrite(target, record)
    _assert_unchanged_after_error(target, "invalid shape", tmp_path)


def test_record_naming_a_missing_module(saved_resnet, tmp_path):
    target = _copy(saved_resnet, tmp_path)
    record = json.loads((target / "pruning.json").read_text())
    record["structure"]["layer9.conv"] = record["structure"]["conv1"]
    _rewrite(target, record)
    _assert_unchanged_after_error(target, "does not have", tmp_path)


def test_wrong_model(saved_resnet):
    fresh = torchvision.models.mobilenet_v2().eval()
    before = _state(fresh)
    with pytest.raises(tp.SerializationError, match="same architecture|does not have"):
        tp.load_pruned(fresh, saved_resnet)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_swapped_weights_file(saved_resnet, tmp_path):
    other, _ = _pruned("resnet18", 64, ratio=0.25)
    other_dir = tmp_path / "other"
    tp.save_pruned(other, str(other_dir))
    target = _copy(saved_resnet, tmp_path)
    (target / "weights.safetensors").write_bytes((other_dir / "weights.safetensors").read_bytes())
    _assert_unchanged_after_error(target, "checksum differs", tmp_path)


def test_not_a_pruned_state_dict():
    fresh = _fresh("resnet18")
    with pytest.raises(tp.SerializationError, match="format"):
        tp.load_state_dict(fresh, fresh.state_dict())
    with pytest.raises(tp.SerializationError, match="expected a pruned state dict"):
        tp.load_state_dict(fresh, [1, 2, 3])


def test_pickled_payloads_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "pruning_core.pruned/1", "structure": Evil()}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    assert not (tmp_path / "pwned").exists()


def test_a_loaded_model_saves_again_with_the_same_structure(tmp_path):
    # Regression: a loaded model had no records, so saving it again (after fine-tuning) lost the structure.
    model, x = _pruned("resnet18", size=64)
    expected = run(model, x)
    tp.save_pruned(model, str(tmp_path / "first"))
    loaded = tp.load_pruned(_fresh("resnet18"), str(tmp_path / "first"))
    tp.save_pruned(loaded, str(tmp_path / "second"))
    again = tp.load_pruned(_fresh("resnet18"), str(tmp_path / "second"))
    torch.testing.assert_close(run(again, x), expected, rtol=0, atol=0)
    first, second = (json.load(open(tmp_path / d / "pruning.json"))["structure"] for d in ("first", "second"))
    assert first == second


class _CachesInputShape(torch.nn.Module):
    """Like an anchor grid: the forward caches the input shape next to a tensor it builds from it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Conv2d(8, 2, 1)
        self.shape = None

    def forward(self, x):
        y = self.head(self.conv(x))
        if self.shape != tuple(y.shape):
            self.shape, self.grid = tuple(y.shape), torch.zeros(y.shape)
        return y + self.grid


def test_attributes_a_forward_sets_after_pruning_are_not_saved(tmp_path):
    # Regression (YOLO Detect.shape): restoring the cached shape without its grid broke the loaded model.
    model = _CachesInputShape()
    x = torch.randn(1, 3, 8, 8)
    tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              ignored_layers=[model.head]).step()
    expected = model(x)  # sets model.shape after pruning
    tp.save_pruned(model, str(tmp_path / "saved"))
    record = json.load(open(tmp_path / "saved" / "pruning.json"))["structure"]
    assert "shape" not in record.get("", {}).get("attrs", {})
    assert record["conv"]["attrs"] == {"out_channels": 4}
    fresh = tp.load_pruned(_CachesInputShape(), str(tmp_path / "saved"))
    torch.testing.assert_close(fresh(x), expected)


def test_a_record_from_before_pruned_attrs_still_saves_changed_attributes(tmp_path):
    # Models pickled by an earlier version carry records without "pruned_attrs": every attribute
    # that differs from the original must still be saved, or the loaded model is silently broken.
    model, x = _pruned("resnet18", size=64)
    expected = run(model, x)
    for module in model.modules():
        record = module.__dict__.get("_pruning_record")
        if record is not None:
            module.__dict__["_pruning_record"] = {k: v for k, v in record.items() if k != "pruned_attrs"}
    tp.save_pruned(model, str(tmp_path / "saved"))
    record = json.load(open(tmp_path / "saved" / "pruning.json"))["structure"]
    assert record["conv1"]["attrs"]["out_channels"] == model.conv1.out_channels
    loaded = tp.load_pruned(_fresh("resnet18"), str(tmp_path / "saved"))
    torch.testing.assert_close(run(loaded, x), expected, rtol=0, atol=0)


class ShiftedLinear(torch.nn.Module):
    """A non-persistent buffer read in the forward (Swin V2's zero ``k_bias``): no weights file holds it."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
        self.register_buffer("shift", torch.arange(8.0), persistent=False)

    def forward(self, x):
        return self.out(self.inp(x) + self.shift)


def test_a_non_persistent_buffer_comes_back_with_the_kept_channels(tmp_path):
    torch.manual_seed(0)
    model, x = ShiftedLinear().eval(), torch.randn(2, 4)
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.inp, tp.prune_linear_out_channels, idxs=[1, 5]).prune()
    assert model.shift.tolist() == [0, 2, 3, 4, 6, 7]
    tp.save_pruned(model, str(tmp_path / "saved"))
    fresh = ShiftedLinear().eval()
    tp.load_pruned(fresh, str(tmp_path / "saved"))
    assert torch.equal(fresh.shift, model.shift)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
