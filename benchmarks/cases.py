"""Models and example inputs shared by the benchmarks (random weights, nothing downloaded)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn


def torchvision_case(name: str, size: int = 224) -> Callable[[], Tuple[nn.Module, Any, List[nn.Module]]]:
    def build():
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
        return model, torch.randn(1, 3, size, size), head
    return build


def llama_case(layers: int = 32) -> Callable[[], Tuple[nn.Module, Any, List[nn.Module]]]:
    def build():
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=layers,
                             num_attention_heads=8, num_key_value_heads=8, vocab_size=1000,
                             max_position_embeddings=128, use_cache=False)
        model = LlamaForCausalLM(config).eval()
        # torch-pruning 1.6.1 never finishes with q/k/v (see FACTS.md); both libraries skip them here.
        ignored = [model.lm_head] + [m for n, m in model.named_modules()
                                     if n.endswith(("q_proj", "k_proj", "v_proj"))]
        return model, torch.randint(0, 1000, (1, 16)), ignored
    return build


CASES: Dict[str, Callable[[], Tuple[nn.Module, Any, List[nn.Module]]]] = {
    "resnet50": torchvision_case("resnet50"),
    "vit_b_16": torchvision_case("vit_b_16"),
    "densenet121": torchvision_case("densenet121"),
    "llama_32_layers": llama_case(32),
}
