"""Tiny configs of every supported family, with example inputs."""

from __future__ import annotations

import torch
import transformers as T

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
