"""prune_checkpoint after a kill or an error: nothing half-written loads, and a rerun resumes to the same result."""

import json
import os
import random
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors.torch")

import pruning_core_hf  # noqa: E402
from pruning_core_hf.streaming import MARKER  # noqa: E402
from pruning_core_hf.testing import (SMALL, assert_same_weights, calibration, load,  # noqa: E402
                                     subprocess_env as _env, write_checkpoint)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("small") / "src"), SMALL)


RUN = """
import sys, torch, pruning_core_hf
from pruning_core_hf import checkpoint
kill_at = int(sys.argv[3])
compensation = None if sys.argv[4] == "None" else sys.argv[4]
save = checkpoint.CheckpointStore.save
def dying_save(self, index, block):
    if index == kill_at:
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, index, block)
checkpoint.CheckpointStore.save = dying_save
if len(sys.argv) > 5:  # die instead while block kill_at's progress record is half written
    from pruning_core_hf import resume
    import safetensors.torch
    checkpoint.CheckpointStore.save = save
    write, saved = resume.write, safetensors.torch.save_file
    def dying_write(work, print_, done, *args):
        if done == kill_at + 1:
            def save_then_die(tensors, path, *a, **k):
                saved(tensors, path, *a, **k)
                import os, signal
                os.kill(os.getpid(), signal.SIGKILL)
            safetensors.torch.save_file = save_then_die
        write(work, print_, done, *args)
    resume.write = dying_write
ids = torch.randint(0, 500, (6, 16), generator=torch.Generator().manual_seed(1))
pruning_core_hf.prune_checkpoint(sys.argv[1], sys.argv[2], calibration=ids, batch_size=4, head_ratio=0.5,
                                 compensation=compensation, progress=False)
"""


@pytest.mark.parametrize("compensation,where", [(None, "block"), ("lstsq", "block"), (None, "record")])
def test_a_killed_run_leaves_nothing_loadable_and_a_rerun_resumes(small_checkpoint, tmp_path, compensation, where):
    dst = str(tmp_path / "out")
    kill_at = random.Random(os.getpid()).randrange(1, SMALL["num_hidden_layers"])
    extra = ["record"] if where == "record" else []  # "record": killed while saving block kill_at's hidden states
    killed = subprocess.run([sys.executable, "-c", RUN, small_checkpoint, dst, str(kill_at), str(compensation)]
                            + extra, env=_env())
    assert killed.returncode == -9
    assert not os.path.exists(dst)
    partial = dst + ".partial"
    assert os.path.isfile(os.path.join(partial, MARKER))
    written = sorted(f for f in os.listdir(partial) if f.endswith(".safetensors"))
    assert len(written) == kill_at + (where == "record")  # the blocks before the kill
    with open(os.path.join(partial, "resume.json")) as handle:
        assert json.load(handle)["done"] == kill_at  # a half-written record never replaces the last whole one
    for loader in (lambda d: transformers.AutoModelForCausalLM.from_pretrained(d), pruning_core_hf.from_pretrained):
        with pytest.raises(Exception):
            loader(partial)
    first = os.path.getmtime(os.path.join(partial, written[0]))
    again = pruning_core_hf.prune_checkpoint(small_checkpoint, dst, calibration=calibration(), batch_size=4,
                                             head_ratio=0.5, compensation=compensation, progress=False)
    assert os.path.getmtime(os.path.join(again, written[0])) == first, "the written blocks were not redone"
    assert not os.path.exists(partial) and not os.path.exists(os.path.join(again, MARKER))
    assert not os.path.exists(os.path.join(again, "resume.json"))
    clean = pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "clean"), calibration=calibration(),
                                             batch_size=4, head_ratio=0.5, compensation=compensation, progress=False)
    assert again.form == clean.form
    assert_same_weights(load(clean, clean.form), load(again, again.form))
    with open(os.path.join(again, "model.safetensors.index.json")) as handle:
        resumed_index = json.load(handle)
    with open(os.path.join(clean, "model.safetensors.index.json")) as handle:
        assert json.load(handle) == resumed_index


def test_a_rerun_with_other_options_starts_over(small_checkpoint, tmp_path, caplog):
    dst = str(tmp_path / "out")
    subprocess.run([sys.executable, "-c", RUN, small_checkpoint, dst, "2", "None"], env=_env())
    assert os.path.isfile(os.path.join(dst + ".partial", "resume.json"))
    with caplog.at_level("WARNING", logger="pruning_core_hf"):
        out = pruning_core_hf.prune_checkpoint(small_checkpoint, dst, calibration=calibration(), batch_size=4,
                                               head_ratio=0.5, ratio=0.2, progress=False)
    assert "starting again" in caplog.text
    assert out.form == "stock" and 300 <= transformers.AutoConfig.from_pretrained(out).intermediate_size <= 310  # 0.2


def test_an_error_midway_keeps_the_old_output_and_the_rerun_resumes(small_checkpoint, tmp_path, monkeypatch):
    from pruning_core_hf import checkpoint

    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("previous result")
    save = checkpoint.CheckpointStore.save

    def failing_save(self, index, block):
        if index == 2:
            raise OSError("disk full")
        save(self, index, block)

    monkeypatch.setattr(checkpoint.CheckpointStore, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        pruning_core_hf.prune_checkpoint(small_checkpoint, str(dst), calibration=calibration(), overwrite=True,
                                         head_ratio=0.5, progress=False)
    assert (dst / "keep.txt").read_text() == "previous result"
    assert os.path.isfile(os.path.join(str(dst) + ".partial", MARKER))  # two blocks done: kept to resume
    monkeypatch.setattr(checkpoint.CheckpointStore, "save", save)
    out = pruning_core_hf.prune_checkpoint(small_checkpoint, str(dst), calibration=calibration(), overwrite=True,
                                           head_ratio=0.5, progress=False)
    assert not (dst / "keep.txt").exists() and out.form == "stock"
    assert not os.path.exists(str(dst) + ".partial")


def test_an_error_before_any_block_is_written_leaves_nothing(small_checkpoint, tmp_path, monkeypatch):
    from pruning_core_hf import checkpoint

    def failing_save(self, index, block):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.CheckpointStore, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "out"), calibration=calibration(),
                                         progress=False)
    assert not os.path.exists(str(tmp_path / "out")) and not os.path.exists(str(tmp_path / "out.partial"))
