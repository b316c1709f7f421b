"""The timm plugin's layer handlers meet the handler contract (pruning_core.testing.check_handler)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame  # noqa: E402

import pruning_core as tp  # noqa: E402
from pruning_core.testing import check_handler  # noqa: E402
from pruning_core_timm.std_conv import scaled_std_conv_handler, scaled_std_depthwise_handler  # noqa: E402


def _registered_handler(layer: torch.nn.Module, x: torch.Tensor):
    """The handler the graph picks for ``layer`` through the plugin registry."""
    return tp.DependencyGraph().build_dependency(layer, x).get_pruner_of_module(layer)


@pytest.mark.parametrize("cls", [ScaledStdConv2d, ScaledStdConv2dSame])
@pytest.mark.parametrize("idxs", [[0], [1, 3]])
def test_scaled_std_conv_handler_meets_the_contract(cls, idxs):
    torch.manual_seed(0)
    layer, x = cls(4, 6, 3, gamma=2.0).eval(), torch.randn(1, 4, 7, 9)
    assert _registered_handler(layer, x) is scaled_std_conv_handler
    # Kept output channels are exact; removing an input changes the weight standardisation, so no exact_in.
    ran = check_handler(scaled_std_conv_handler, layer, x, idxs=idxs, exact_out=True)
    assert ran == ["prune_out_channels", "prune_in_channels", "channel_params(out)", "channel_params(in)"]


def test_depthwise_scaled_std_conv_uses_the_coupled_variant():
    torch.manual_seed(0)
    layer, x = ScaledStdConv2d(6, 6, 3, groups=6).eval(), torch.randn(1, 6, 7, 9)
    assert _registered_handler(layer, x) is scaled_std_depthwise_handler
    # Given the general handler, check_handler checks the variant it picks for this layer.
    ran = check_handler(scaled_std_conv_handler, layer, x, idxs=[2, 5], exact_out=True)
    assert ran == ["prune_out_channels", "channel_params(out)", "channel_params(in)"]  # one channel set


def test_pruning_inputs_matches_a_fresh_layer_of_the_new_width():
    torch.manual_seed(0)
    layer, x = ScaledStdConv2d(5, 6, 3, gamma=2.0).eval(), torch.randn(1, 5, 7, 9)
    scaled_std_conv_handler.prune_in_channels(layer, [0, 3])
    fresh = ScaledStdConv2d(3, 6, 3, gamma=2.0).eval()  # its scale is gamma / sqrt(new fan-in)
    fresh.load_state_dict(layer.state_dict())
    keep = torch.tensor([1, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(layer(x[:, keep]), fresh(x[:, keep]))
