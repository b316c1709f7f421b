"""MACs and parameter counting."""

import torch
import torchvision

import pruning_core as tp


def test_resnet18_macs_and_params_match_published_numbers():
    model = torchvision.models.resnet18().eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 224, 224))
    assert params == 11_689_512
    assert abs(macs - 1.814e9) / 1.814e9 < 0.01


def test_counting_works_on_meta_tensors_and_per_layer():
    with torch.device("meta"):
        model = torchvision.models.resnet50()
        x = torch.randn(1, 3, 224, 224)
    macs, params, per_module = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert abs(macs - 4.09e9) / 4.09e9 < 0.01
    assert params == 25_557_032
    assert per_module["conv1"] == 118_013_952


def test_counts_drop_after_pruning():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(32))).prune()
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    assert macs1 < macs0 and params1 < params0
