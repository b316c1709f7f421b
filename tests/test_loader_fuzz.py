"""Fuzzing the loaders: truncated and bit-flipped files only ever give a SerializationError."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pruning_core as tp
from pruning_core.testing.oracle import assert_same, fingerprint

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    tp.pruner.BasePruner(model, X, pruning_ratio=0.5).step()
    directory = tmp_path_factory.mktemp("fuzz") / "saved"
    tp.save_pruned(model, str(directory))
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    with torch.no_grad():
        expected = model(X)
    return directory, buffer.getvalue(), expected


def _fresh():
    torch.manual_seed(1)
    return torchvision.models.resnet18().eval()


def _load_or_refuse(load, expected):
    model = _fresh()
    before = fingerprint(model)
    try:
        load(model)
    except tp.SerializationError:
        assert_same(before, fingerprint(model))
        return "refused"
    with torch.no_grad():
        assert torch.equal(model(X), expected)  # a harmless change may load, but then exactly
    return "loaded"


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(file=st.sampled_from(["pruning.json", "weights.safetensors"]), data=st.data())
def test_truncated_files(saved, tmp_path_factory, file, data):
    directory, _, expected = saved
    target = tmp_path_factory.mktemp("t") / "copy"
    shutil.copytree(directory, target)
    content = (target / file).read_bytes()
    cut = data.draw(st.integers(0, len(content) - 1))
    (target / file).write_bytes(content[:cut])
    assert _load_or_refuse(lambda m: tp.load_pruned(m, str(target)), expected) == "refused"


@FUZZ
@given(file=st.sampled_from(["pruning.json", "weights.safetensors"]), data=st.data())
def test_flipped_bytes(saved, tmp_path_factory, file, data):
    directory, _, expected = saved
    target = tmp_path_factory.mktemp("f") / "copy"
    shutil.copytree(directory, target)
    content = bytearray((target / file).read_bytes())
    position = data.draw(st.integers(0, len(content) - 1))
    content[position] ^= 1 << data.draw(st.integers(0, 7))
    (target / file).write_bytes(bytes(content))
    assert _load_or_refuse(lambda m: tp.load_pruned(m, str(target)), expected) == "refused"


@FUZZ
@given(data=st.data())
def test_corrupted_torch_payload(saved, data):
    _, payload, expected = saved
    content = bytearray(payload)
    if data.draw(st.booleans()):
        content = content[:data.draw(st.integers(0, len(content) - 1))]
    else:
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] ^= 1 << data.draw(st.integers(0, 7))

    def load(model):
        try:
            state = torch.load(io.BytesIO(bytes(content)), weights_only=True)
        except Exception as exc:  # torch's own error for an unreadable file; no code ran
            raise tp.SerializationError(f"unreadable: {exc}") from None
        tp.load_state_dict(model, state)

    _load_or_refuse(load, expected)


def test_edited_record_is_refused_even_when_valid_json(saved, tmp_path):
    import json

    directory, _, expected = saved
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    record = json.loads((target / "pruning.json").read_text())
    record["structure"]["conv1"]["attrs"]["in_channels"] = 2  # loads, and would leave a wrong attribute
    (target / "pruning.json").write_text(json.dumps(record))
    assert _load_or_refuse(lambda m: tp.load_pruned(m, str(target)), expected) == "refused"
