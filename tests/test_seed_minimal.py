"""The seed README's "minimal example of DepGraph", run as written (random weights instead of a download)."""

import torch
from torchvision.models import resnet18

import pruning_core as tp


def test_minimal_example_runs_and_prints_the_coupled_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = resnet18().eval()

    # 1. build the dependency graph for resnet18
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 224, 224))
    # 2. group coupled layers for model.conv1
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    # 3. prune
    if DG.check_pruning_group(group):
        group.prune()
    print(group)
    # 4. save & load (torch >= 2.6 needs weights_only=False for a whole pickled model)
    model.zero_grad()
    torch.save(model, "model.pth")
    model = torch.load("model.pth", weights_only=False)

    printed = capsys.readouterr().out
    for name in ("conv1 (", "bn1 (", "layer1.0.conv1", "layer1.0.bn2", "layer1.1.conv1", "layer2.0.conv1",
                 "layer2.0.downsample.0", "=>", "idxs=[2, 6, 9]"):
        assert name in printed
    assert model.conv1.out_channels == 61
    assert model.layer2[0].downsample[0].in_channels == 61
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_group_members_and_handlers_match_the_seed_api():
    model = resnet18().eval()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 64, 64))
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    dep, idxs = group[0]
    assert dep.target.module is model.conv1
    assert dep.handler == tp.prune_conv_out_channels
    assert idxs == [2, 6, 9]
    members = {(item.dep.target.module, item.dep.handler.__name__) for item in group}
    assert (model.bn1, "prune_out_channels") in members
    assert (model.layer1[0].conv1, "prune_in_channels") in members
    assert (model.layer1[0].conv2, "prune_out_channels") in members
    assert (model.layer4[0].conv1, "prune_in_channels") not in members
    handlers = {item.dep.handler for item in group}
    assert tp.prune_batchnorm_out_channels in handlers


def test_get_all_groups_scans_and_prunes_in_order():
    model = resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    count = 0
    for group in DG.get_all_groups(ignored_layers=[model.conv1], root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        idxs = [2, 4, 6]
        group.prune(idxs=idxs)
        count += 1
    # conv1 is ignored: the stem/layer1 residual channels stay 64; every other group lost 3.
    assert model.conv1.out_channels == 64
    assert model.layer1[0].conv1.out_channels == 61
    assert model.layer4[1].conv2.out_channels == 509
    assert model.fc.out_features == 1000
    assert count == 11
    assert model(x).shape == (1, 1000)
