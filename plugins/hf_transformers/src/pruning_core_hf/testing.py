"""Helpers for testing streamed pruning: random bf16 Llama checkpoints on disk and an in-memory reference.

Used by the plugin's tests; needs transformers and safetensors.
"""

import json
import os
import sys

import torch
import transformers
from safetensors import torch as safetensors_torch

import pruning_core as tp
import pruning_core_hf


SMALL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, vocab_size=500)
# About 150 MB in bf16: big enough that one block is a small part of it.
MEDIUM = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8,
              num_key_value_heads=8, vocab_size=32000)


def write_checkpoint(directory, shape, shards=3, seed=0):
    """A random bf16 Llama checkpoint in ``shards`` safetensors files, written tensor by tensor."""
    config = transformers.LlamaConfig(**shape, dtype="bfloat16", tie_word_embeddings=False,
                                      architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    names = list(skeleton.state_dict().items())
    generator = torch.Generator().manual_seed(seed)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for number in range(shards):
        part = names[number * per_shard:(number + 1) * per_shard]
        filename = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {name: (torch.randn(meta.shape, generator=generator) * 0.05).to(torch.bfloat16)
                   for name, meta in part}
        safetensors_torch.save_file(tensors, os.path.join(directory, filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in tensors})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {}, "weight_map": weight_map}, handle)
    return directory


def calibration(count=6, tokens=16, vocab=500):
    return torch.randint(0, vocab, (count, tokens), generator=torch.Generator().manual_seed(1))


def in_memory(src, importance, compensation, ratio, head_ratio, global_pruning, batches):
    """The reference: the whole model loaded, pruned by BasePruner with the same settings."""
    from pruning_core_hf.streaming import forward_without_cache

    model = transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
    blocks = {id(m) for layer in model.model.layers for m in layer.modules()}
    outside = [m for m in model.modules() if id(m) not in blocks and not list(m.children())]
    tp.pruner.BasePruner(model, {"input_ids": calibration(1, 8)}, importance=importance, pruning_ratio=ratio,
                         prune_num_heads=True, head_pruning_ratio=head_ratio, global_pruning=global_pruning,
                         ignored_layers=outside, calibration=batches, compensation=compensation,
                         forward_fn=forward_without_cache(model)).step()
    return model


def load(directory, form):
    if form == "stock":
        return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).eval()
    return pruning_core_hf.from_pretrained(directory)


def assert_same_weights(reference, streamed):
    ours, theirs = reference.state_dict(), streamed.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert theirs[name].dtype == torch.bfloat16, name
        assert tuple(theirs[name].shape) == tuple(tensor.shape), name
        scale = tensor.float().abs().max().clamp_min(1e-12)
        assert float((theirs[name].float() - tensor.float()).abs().max() / scale) <= 1e-5, name


def subprocess_env():
    """The environment for a child Python that must import what this process imports."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


__all__ = ["SMALL", "MEDIUM", "write_checkpoint", "calibration", "in_memory", "load", "assert_same_weights",
           "subprocess_env"]
