"""Whole-head pruning of fused q/k/v projections with fewer key/value heads, and of low-rank (MLA) attention.

Phi-3 (``qkv_proj`` = ``[q | k | v]`` cut by slices, grouped-query), Falcon (``query_key_value``: multi-query
``[heads + 2, head_dim]``, the new decoder's ``[kv_heads, queries + 2, head_dim]``, and the interleaved
``[heads, 3, head_dim]``) and GPTBigCode (``c_attn`` split into ``[q | k | v]``, multi-query); DeepSeek-V3's
multi-head latent attention (``q_b_proj`` and ``kv_b_proj`` expand low-rank latents per head). For each:

1. the head counts on the blocks (and in the config, where it describes the model) go down to the asked ratio;
2. the pruned model runs and generates;
3. the oracle: the dense model with the removed heads' output-projection columns set to zero gives the
   pruned model's logits (a removed head contributed nothing else), and the kept rows of the fused
   projection are exactly the q, k and v rows of the kept heads (whole key/value groups, or query heads
   only under multi-query attention);
4. ``pruning_core_hf.save_pretrained`` then loading in a fresh process gives the same logits.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import nn

T = pytest.importorskip("transformers")

import pruning_core as tp  # noqa: E402
import pruning_core_hf  # noqa: E402
from pruning_core.errors import PruningWarning  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 23, 11, 2]])}
BASE = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, max_position_embeddings=128, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)

# name -> (model class, config class, config overrides, attention path, fused child, output child)
CASES: Dict[str, Tuple[str, str, Dict[str, Any], str, str, str]] = {
    "phi3_gqa": ("Phi3ForCausalLM", "Phi3Config", dict(intermediate_size=128, num_attention_heads=8,
                                                       num_key_value_heads=4), "model.layers.{}.self_attn",
                 "qkv_proj", "o_proj"),
    "phi3_mqa": ("Phi3ForCausalLM", "Phi3Config", dict(intermediate_size=128, num_attention_heads=4,
                                                       num_key_value_heads=1), "model.layers.{}.self_attn",
                 "qkv_proj", "o_proj"),
    "falcon_mqa": ("FalconForCausalLM", "FalconConfig", dict(num_attention_heads=4),
                   "transformer.h.{}.self_attention", "query_key_value", "dense"),
    "falcon_new": ("FalconForCausalLM", "FalconConfig", dict(num_attention_heads=4, num_kv_heads=2,
                                                             new_decoder_architecture=True),
                   "transformer.h.{}.self_attention", "query_key_value", "dense"),
    "falcon_interleaved": ("FalconForCausalLM", "FalconConfig", dict(num_attention_heads=4, multi_query=False),
                           "transformer.h.{}.self_attention", "query_key_value", "dense"),
    "gpt_bigcode_mqa": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(n_embd=64, n_layer=2, n_head=4,
                                                                          n_positions=128),
                        "transformer.h.{}.attn", "c_attn", "c_proj"),
}


def build(name: str) -> nn.Module:
    model_class, config_class, overrides, *_ = CASES[name]
    torch.manual_seed(0)
    config = getattr(T, config_class)(**{**BASE, **overrides})
    return getattr(T, model_class)(config).eval()


def kept(pruned: torch.Tensor, dense: torch.Tensor) -> List[int]:
    """Indices of the rows of ``dense`` that ``pruned`` kept, in order (random weights: each row is unique)."""
    found = []
    for row in pruned:
        match = [i for i in range(dense.shape[0]) if torch.equal(dense[i], row)]
        assert len(match) == 1, "a pruned row is not exactly one row of the dense weight"
        found.append(match[0])
    return found


def qkv_rows(heads: List[int], kv: List[int], n_heads: int, n_kv: int, size: int, layout: str) -> List[int]:
    """Rows of the fused projection that hold query heads ``heads`` and key/value heads ``kv``."""
    if layout == "blocks":  # [q: n_heads x size | k: n_kv x size | v: n_kv x size]
        spans = [h * size for h in heads] + [(n_heads + k) * size for k in kv] + \
            [(n_heads + n_kv + k) * size for k in kv]
    elif layout == "groups":  # per key/value group: its queries, then its key, then its value
        group = n_heads // n_kv
        spans = sorted([(h // group * (group + 2) + h % group) * size for h in heads] +
                       [(k * (group + 2) + group + j) * size for k in kv for j in (0, 1)])
    else:  # interleaved per head: [heads, 3, size]
        spans = [(h * 3 + j) * size for h in heads for j in range(3)]
    return sorted(r for start in spans for r in range(start, start + size))


LAYOUTS = {"phi3_gqa": "blocks", "phi3_mqa": "blocks", "falcon_mqa": "groups", "falcon_new": "groups",
           "falcon_interleaved": "interleaved", "gpt_bigcode_mqa": "blocks"}


def counts(block: nn.Module) -> Tuple[int, int, int]:
    """(query heads, key/value heads, head size) from the block's attributes."""
    size = block.head_dim
    kv = next(getattr(block, a) for a in ("num_key_value_heads", "num_kv_heads", "kv_heads") if hasattr(block, a))
    heads = getattr(block, "num_heads", None) or kv * block.num_key_value_groups
    if getattr(block, "new_decoder_architecture", False) is False and getattr(block, "multi_query", None) is False:
        kv = heads  # Falcon's interleaved layout keeps a key/value head per query head
    return heads, kv, size


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Dict[str, Dict[str, Any]]:
    root = tmp_path_factory.mktemp("fused_heads")
    results = {}
    for name in CASES:
        model = build(name)
        dense = copy.deepcopy(model)
        blocks = [model.get_submodule(CASES[name][3].format(i)) for i in range(2)]
        before = [counts(b) for b in blocks]
        tp.pruner.BasePruner(model, TEXT, pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5).step()
        with torch.no_grad():
            logits = model(**TEXT).logits
        directory = str(root / name)
        pruning_core_hf.save_pretrained(model, directory)
        torch.save({"inputs": TEXT, "logits": logits}, os.path.join(directory, "expected.pt"))
        results[name] = dict(model=model, dense=dense, before=before, after=[counts(b) for b in blocks],
                             logits=logits, directory=directory)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_heads_go_down_to_the_ratio(name, pruned):
    case = pruned[name]
    for (heads, kv, size), (new_heads, new_kv, new_size) in zip(case["before"], case["after"]):
        assert new_size == size
        unit = 1 if kv == 1 else heads // kv  # multi-query: query heads; otherwise a key/value group
        assert abs(new_heads - heads * 0.5) <= unit and new_heads < heads
        assert new_kv == (kv if kv == 1 else new_heads // (heads // kv))
    config = case["model"].config
    if config.pruning_core["uniform"]:
        assert config.num_attention_heads == case["after"][0][0]


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_model_generates(name, pruned):
    model = pruned[name]["model"]
    generated = model.generate(**TEXT, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == TEXT["input_ids"].shape[1] + 3


@pytest.mark.parametrize("name", list(CASES))
def test_removed_heads_contributed_nothing_else(name, pruned):
    """Zeroing the removed heads' columns of the output projection in the dense model gives the pruned logits."""
    case = pruned[name]
    path, fused, output = CASES[name][3:]
    dense = case["dense"]
    for layer, ((heads, kv, size), _) in enumerate(zip(case["before"], case["after"])):
        block, dense_block = (m.get_submodule(path.format(layer)) for m in (case["model"], dense))
        columns = kept(getattr(block, output).weight.t(), getattr(dense_block, output).weight.t())
        kept_heads = sorted({c // size for c in columns})
        assert columns == [h * size + i for h in kept_heads for i in range(size)]  # whole heads, in order
        group = heads // kv
        kept_kv = list(range(kv)) if kv == 1 else sorted({h // group for h in kept_heads})
        if kv > 1:  # a whole key/value group goes: all its query heads, or none
            assert kept_heads == [g * group + q for g in kept_kv for q in range(group)]
        rows = kept(getattr(block, fused).weight, getattr(dense_block, fused).weight)
        assert rows == qkv_rows(kept_heads, kept_kv, heads, kv, size, LAYOUTS[name])
        with torch.no_grad():
            weight = getattr(dense_block, output).weight
            mask = torch.ones(weight.shape[1], dtype=torch.bool)
            mask[columns] = False
            weight[:, mask] = 0
    with torch.no_grad():
        reference = dense(**TEXT).logits
    assert torch.allclose(reference, case["logits"], atol=1e-5), float((reference - case["logits"]).abs().max())


RELOAD = textwrap.dedent("""
    import json, sys, torch, pruning_core_hf
    out = {}
    for directory in json.loads(sys.argv[1]):
        expected = torch.load(directory + "/expected.pt")
        with torch.no_grad():
            logits = pruning_core_hf.from_pretrained(directory).eval()(**expected["inputs"]).logits
        out[directory] = float((logits - expected["logits"]).abs().max())
    print(json.dumps(out))
""")


def test_saved_form_loads_in_a_fresh_process(pruned):
    directories = [case["directory"] for case in pruned.values()]
    result = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(directories)], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                                             TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    assert differences == {d: pytest.approx(0.0, abs=1e-5) for d in directories}


def test_latent_attention_heads_prune_whole_and_contribute_nothing_else(tmp_path):
    """DeepSeek-V3: a removed head loses its q_b_proj and kv_b_proj rows and its o_proj columns, nothing else."""
    torch.manual_seed(0)
    config = T.DeepseekV3Config(**BASE, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                                q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1)
    model = T.DeepseekV3ForCausalLM(config).eval()
    dense = copy.deepcopy(model)
    tp.pruner.BasePruner(model, TEXT, pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5).step()
    with torch.no_grad():
        logits = model(**TEXT).logits
    for layer in range(2):
        block, dense_block = model.model.layers[layer].self_attn, dense.model.layers[layer].self_attn
        assert block.num_heads == 2
        columns = kept(block.o_proj.weight.t(), dense_block.o_proj.weight.t())
        heads = sorted({c // 16 for c in columns})
        assert len(heads) == 2 and columns == [h * 16 + i for h in heads for i in range(16)]
        assert kept(block.q_b_proj.weight, dense_block.q_b_proj.weight) == [h * 16 + i for h in heads
                                                                             for i in range(16)]
        assert kept(block.kv_b_proj.weight, dense_block.kv_b_proj.weight) == [h * 24 + i for h in heads
                                                                               for i in range(24)]
        with torch.no_grad():
            mask = torch.ones(64, dtype=torch.bool)
            mask[columns] = False
            dense_block.o_proj.weight[:, mask] = 0
    with torch.no_grad():
        reference = dense(**TEXT).logits
    assert torch.allclose(reference, logits, atol=1e-5), float((reference - logits).abs().max())
    generated = model.generate(**TEXT, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == TEXT["input_ids"].shape[1] + 3


@pytest.mark.parametrize("name", ["bloom", "falcon_alibi"])
def test_alibi_blocks_keep_their_heads_and_say_why(name):
    """ALiBi slopes come from the head count in the model's forward: the heads stay, and the warning says so."""
    torch.manual_seed(0)
    if name == "bloom":
        model = T.BloomForCausalLM(T.BloomConfig(**BASE, n_head=4)).eval()
    else:
        model = T.FalconForCausalLM(T.FalconConfig(**BASE, num_attention_heads=4, alibi=True)).eval()
    with torch.no_grad():
        before = model(**TEXT).logits
    with pytest.warns(PruningWarning, match="ALiBi slopes are computed in the model's forward from the head"):
        tp.pruner.BasePruner(model, TEXT, pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5).step()
    with torch.no_grad():
        assert torch.equal(model(**TEXT).logits, before)
