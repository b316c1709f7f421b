"""prune_checkpoint: streamed pruning equals in-memory pruning, stays small in memory and never leaves half a model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import pruning_core as tp  # noqa: E402
import pruning_core_hf  # noqa: E402

from pruning_core_hf.testing import (MEDIUM, SMALL, assert_same_weights, calibration, in_memory, load,  # noqa: E402
                                     subprocess_env as _env, write_checkpoint)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("small") / "src"), SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("importance,compensation,head_ratio,global_pruning", [
    ("wanda", None, 0.5, False),     # uniform: the stock form
    ("flap", "bias", 0.3, True),     # ranked across blocks: two passes, the plugin's form
    ("obs", "lstsq", 0.5, False),    # Gram statistics and a least-squares refit per block
    ("l2", None, 0.5, False),        # weights only: no calibration pass at all
])
def test_streamed_prune_equals_the_in_memory_prune(small_checkpoint, tmp_path, importance, compensation,
                                                   head_ratio, global_pruning):
    data = None if importance == "l2" else calibration()
    batches = None if data is None else list(data.split(4))
    result = pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "out"), ratio=0.3,
                                              importance=importance, compensation=compensation,
                                              calibration=data, batch_size=4, head_ratio=head_ratio,
                                              global_pruning=global_pruning, progress=False)
    # Blocks pruned differently, or biases compensation added: the stock config cannot describe them.
    assert result.form == ("stock" if compensation is None and not global_pruning else "pruning_core_hf"), \
        result.reason
    reference = in_memory(small_checkpoint, importance, compensation, 0.3, head_ratio, global_pruning, batches)
    streamed = load(result, result.form)
    assert_same_weights(reference, streamed)
    assert result.params_after < result.params_before
    ids = calibration(2, 12)
    torch.testing.assert_close(streamed(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_hidden_states_spill_to_disk_past_the_budget(small_checkpoint, tmp_path):
    kept = pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "memory"), calibration=calibration(),
                                            batch_size=2, head_ratio=0.5, progress=False)
    spilled = pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "disk"), calibration=calibration(),
                                               batch_size=2, head_ratio=0.5, max_memory=1, progress=False)
    assert_same_weights(load(kept, kept.form), load(spilled, spilled.form))
    assert not os.path.exists(os.path.join(spilled, "hidden")), "the spilled activations are cleaned up"


def test_stock_from_pretrained_in_a_fresh_process_gives_the_in_memory_logits(small_checkpoint, tmp_path):
    out = pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "out"), calibration=calibration(),
                                           batch_size=4, head_ratio=0.5, progress=False)
    assert out.form == "stock"
    ids = calibration(2, 10)
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import torch, transformers
        model = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.bfloat16).eval()
        ids = torch.load({str(tmp_path / 'ids.pt')!r})
        torch.save(model(ids).logits, {str(tmp_path / 'logits.pt')!r})
        import sys
        assert "pruning_core" not in sys.modules and "pruning_core_hf" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=_env())
    reference = in_memory(small_checkpoint, "wanda", None, 0.3, 0.5, False, list(calibration().split(4)))
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), reference(ids).logits, rtol=0, atol=0)
    with open(os.path.join(out, "config.json")) as handle:
        config = json.load(handle)
    assert config["num_attention_heads"] == 4 and config["intermediate_size"] < SMALL["intermediate_size"]
    assert config["dtype"] == "bfloat16"



@pytest.mark.slow
def test_peak_memory_stays_well_under_the_checkpoint(small_checkpoint, tmp_path):
    """Streaming never holds the whole checkpoint. At this size fixed costs dominate: the growth measured
    46-67 MB for this 147 MB checkpoint in seven runs on 2026-12-02 (one CI run failed a 40% bound), so the
    bound is 60%; loading the whole model would grow by more than the checkpoint. The 7B-shaped run in
    benchmarks/results/llm_memory.md measures the ratio that matters (0.17)."""
    src, small = write_checkpoint(str(tmp_path / "src"), MEDIUM), small_checkpoint
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors"))
    assert 130e6 < size < 200e6
    script = textwrap.dedent(f"""
        import json, torch, transformers, pruning_core_hf, pruning_core.calibration.streaming
        ids = torch.randint(0, 32000, (8, 64), generator=torch.Generator().manual_seed(0))
        def status(field):
            with open("/proc/self/status") as handle:
                return next(int(l.split()[1]) * 1024 for l in handle if l.startswith(field + ":"))
        # A first run on a tiny checkpoint pays the one-time costs (imports, plugin loading, caches).
        pruning_core_hf.prune_checkpoint({small!r}, {str(tmp_path / 'warm')!r}, calibration=4, progress=False)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the high-water mark: from here on it is the prune's peak
        base = status("VmRSS")
        pruning_core_hf.prune_checkpoint({src!r}, {str(tmp_path / 'out')!r}, calibration=ids, batch_size=4,
                                         head_ratio=0.5, max_shard_size="20MB", progress=False)
        print(json.dumps({{"base": base, "peak": status("VmHWM")}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=_env())
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    grown = measured["peak"] - measured["base"]
    assert grown < 0.6 * size, f"peak RSS grew by {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"


@pytest.mark.parametrize("damage,message", [
    ("missing shard", "does not exist"),
    ("index names a missing tensor", "that shard has no such tensor"),
    ("config disagrees", "the config and the weights disagree"),
    ("pickle checkpoint", "never loads"),
    ("missing tensor", "has no tensor for"),
])
def test_bad_checkpoints_get_errors_naming_the_file(small_checkpoint, tmp_path, damage, message):
    import shutil

    src = str(tmp_path / "src")
    shutil.copytree(small_checkpoint, src)
    index_path = os.path.join(src, "model.safetensors.index.json")
    with open(index_path) as handle:
        index = json.load(handle)
    if damage == "missing shard":
        os.remove(os.path.join(src, "model-00002-of-00003.safetensors"))
    elif damage == "index names a missing tensor":
        index["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00003.safetensors"
    elif damage == "config disagrees":
        with open(os.path.join(src, "config.json")) as handle:
            config = json.load(handle)
        config["intermediate_size"] = 256
        with open(os.path.join(src, "config.json"), "w") as handle:
            json.dump(config, handle)
    elif damage == "pickle checkpoint":
        for name in os.listdir(src):
            if "safetensors" in name:
                os.remove(os.path.join(src, name))
        open(os.path.join(src, "pytorch_model.bin"), "wb").close()
    elif damage == "missing tensor":
        shard = os.path.join(src, "model-00003-of-00003.safetensors")
        tensors = safetensors_torch.load_file(shard)
        dropped = sorted(tensors)[0]
        del tensors[dropped]
        safetensors_torch.save_file(tensors, shard, metadata={"format": "pt"})
        del index["weight_map"][dropped]
    if os.path.exists(index_path):
        with open(index_path, "w") as handle:
            json.dump(index, handle)
    with pytest.raises(tp.SerializationError, match=message) as caught:
        pruning_core_hf.prune_checkpoint(src, str(tmp_path / "out"), calibration=calibration(), progress=False)
    assert src in str(caught.value) or "model-0000" in str(caught.value)
    assert not os.path.exists(str(tmp_path / "out")) and not os.path.exists(str(tmp_path / "out.partial"))


def test_an_existing_output_is_kept_unless_overwrite(small_checkpoint, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(tp.ConfigurationError, match="already exists"):
        pruning_core_hf.prune_checkpoint(small_checkpoint, str(dst), calibration=calibration(), progress=False)
    assert (dst / "keep.txt").read_text() == "mine"
    with pytest.raises(tp.ConfigurationError, match="max_memory"):
        pruning_core_hf.prune_checkpoint(small_checkpoint, str(tmp_path / "x"), max_memory="lots", progress=False)
    out = pruning_core_hf.prune_checkpoint(small_checkpoint, str(dst), calibration=calibration(), head_ratio=0.5,
                                           overwrite=True, progress=False)
    assert not (dst / "keep.txt").exists() and out.form == "stock"


def test_command_line_low_memory(small_checkpoint, tmp_path, capsys):
    from pruning_core.cli import main

    out = str(tmp_path / "cli")
    assert main(["prune", f"hf:{small_checkpoint}", "--low-memory", "--ratio", "0.3", "--importance", "wanda",
                 "--calib", "4", "--output", out, "--json"]) == 0
    model = pruning_core_hf.from_pretrained(out)
    assert model.model.layers[0].mlp.up_proj.out_features < SMALL["intermediate_size"]
    assert main(["prune", "torchvision:resnet18", "--low-memory", "--ratio", "0.3", "--output",
                 str(tmp_path / "r")]) == 2
    assert "schemes that can: hf" in capsys.readouterr().err


FAMILIES = {  # decoder stacks with per-layer sliding windows (Gemma 2), Conv1D layers (GPT-2), an encoder (BERT),
    # positions derived from the mask (OPT)
    "Qwen2ForCausalLM": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=200),
    "Gemma2ForCausalLM": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=200, head_dim=16, sliding_window=4),
    "GPT2LMHeadModel": dict(n_embd=64, n_layer=3, n_head=4, vocab_size=200, bos_token_id=0, eos_token_id=0),
    "BertModel": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      vocab_size=200),
    "OPTForCausalLM": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4, vocab_size=200,
                           word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(FAMILIES))
def test_streaming_matches_in_memory_across_families(architecture, tmp_path):
    from pruning_core.calibration.sequential import find_blocks
    from pruning_core_hf.streaming import forward_without_cache

    model_class = getattr(transformers, architecture)
    config = model_class.config_class(**FAMILIES[architecture], architectures=[architecture])
    torch.manual_seed(0)
    model_class(config).save_pretrained(tmp_path / "src")
    ids = calibration(4, 12, vocab=200)
    result = pruning_core_hf.prune_checkpoint(str(tmp_path / "src"), str(tmp_path / "out"), head_ratio=0.5,
                                              calibration=ids, batch_size=2, progress=False)
    reference = model_class.from_pretrained(tmp_path / "src").eval()
    blocks = {id(m) for block in find_blocks(reference) for m in block.modules()}
    outside = [m for m in reference.modules() if id(m) not in blocks and not list(m.children())]
    tp.pruner.BasePruner(reference, {"input_ids": ids[:1]}, importance="wanda", pruning_ratio=0.3,
                         prune_num_heads=True, head_pruning_ratio=0.5, ignored_layers=outside,
                         calibration=list(ids.split(2)), forward_fn=forward_without_cache(reference)).step()
    streamed = model_class.from_pretrained(result).eval() if result.form == "stock" \
        else pruning_core_hf.from_pretrained(result)
    ours, theirs = reference.state_dict(), streamed.state_dict()
    assert set(ours) == set(theirs) and result.params_after < result.params_before
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name], tensor, rtol=0, atol=0, msg=name)
    first, second = reference(ids[:2]), streamed(ids[:2])
    torch.testing.assert_close(second[0], first[0], rtol=0, atol=0)


def test_converted_checkpoints_are_refused_with_the_reason(tmp_path):
    config = transformers.Qwen3MoeConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=200, num_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16,
                                         architectures=["Qwen3MoeForCausalLM"])
    transformers.Qwen3MoeForCausalLM(config).save_pretrained(tmp_path / "src")
    with pytest.raises(tp.SerializationError, match="transformers converts while loading"):
        pruning_core_hf.prune_checkpoint(str(tmp_path / "src"), str(tmp_path / "out"), calibration=2, progress=False)
