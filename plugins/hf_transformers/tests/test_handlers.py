"""The hf plugin's layer handlers meet the handler contract (pruning_core.testing.check_handler)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

import pruning_core as tp  # noqa: E402
from pruning_core.testing import check_handler  # noqa: E402
from pruning_core_hf.conv1d import conv1d_handler  # noqa: E402


def _registered_handler(layer: torch.nn.Module, x: torch.Tensor):
    """The handler the graph picks for ``layer`` through the plugin registry."""
    return tp.DependencyGraph().build_dependency(layer, x).get_pruner_of_module(layer)


@pytest.mark.parametrize("idxs", [[0], [1, 4]])
def test_conv1d_handler_meets_the_contract_exactly(idxs):
    torch.manual_seed(0)
    layer, x = Conv1D(nf=6, nx=5), torch.randn(2, 3, 5)  # GPT-2's transposed linear layer
    assert _registered_handler(layer, x) is conv1d_handler
    ran = check_handler(conv1d_handler, layer, x, idxs=idxs, exact_out=True, exact_in=True)
    assert ran == ["prune_out_channels", "prune_in_channels", "channel_params(out)", "channel_params(in)"]


def test_conv1d_handler_keeps_its_size_attributes_in_step():
    layer = Conv1D(nf=6, nx=5)
    conv1d_handler.prune_out_channels(layer, [0, 2])
    conv1d_handler.prune_in_channels(layer, [4])
    assert (layer.nf, layer.nx) == (4, 4) and layer.weight.shape == (4, 4) and layer.bias.shape == (4,)
