"""The yolo plugin's layer handlers meet the handler contract (pruning_core.testing.check_handler)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ultralytics")
from ultralytics.nn.modules.block import Attention  # noqa: E402

import pruning_core as tp  # noqa: E402
from pruning_core.testing import check_handler  # noqa: E402
from pruning_core_yolo.attention import prune_psa_attention_handler  # noqa: E402


def _attention(heads: int) -> Attention:
    torch.manual_seed(0)
    layer = Attention(dim=16, num_heads=heads, attn_ratio=0.5).eval()
    for module in layer.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize("heads,idxs", [(1, [0]), (1, [3, 9]), (2, [0, 8]), (2, [1, 2, 12, 15]), (4, [0, 5, 9, 14])])
def test_psa_attention_handler_meets_the_contract(heads, idxs):
    layer, x = _attention(heads), torch.randn(1, 16, 3, 5)
    assert tp.DependencyGraph().build_dependency(layer, x).get_pruner_of_module(layer) is prune_psa_attention_handler
    # One channel set (input = output = value channels); every head must lose the same number.
    ran = check_handler(prune_psa_attention_handler, layer, x, idxs=idxs)
    assert ran == ["prune_out_channels", "channel_params(out)", "channel_params(in)"]


def test_uneven_removal_across_heads_is_refused_not_checked():
    layer, x = _attention(2), torch.randn(1, 16, 3, 5)
    with pytest.raises(tp.InvalidIndicesError, match="same number"):
        check_handler(prune_psa_attention_handler, layer, x, idxs=[0])
    assert layer.head_dim == 8 and layer.proj.conv.out_channels == 16  # the layer itself is never touched


def test_pruned_attention_keeps_head_layout():
    layer, x = _attention(2), torch.randn(1, 16, 3, 5)
    prune_psa_attention_handler.prune_out_channels(layer, [0, 8])
    assert (layer.num_heads, layer.head_dim, layer.key_dim) == (2, 7, 4)
    assert layer.qkv.conv.out_channels == 2 * (2 * 4 + 7) and layer.pe.conv.groups == 14
