"""The seed README's "High-level Pruners" code blocks, run unchanged (random weights, tiny data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

import pruning_core as tp


def _resnet18_channels(model):
    return (model.conv1.out_channels, model.layer2[0].conv1.out_channels, model.layer3[0].conv1.out_channels,
            model.layer4[0].conv1.out_channels)


@pytest.mark.parametrize("criterion", ["taylor", "magnitude", "hessian"])
def test_high_level_pruner_block(criterion):
    model = resnet18()
    example_inputs = torch.randn(1, 3, 224, 224)

    # 1. Importance criterion
    if criterion == "taylor":
        imp = tp.importance.GroupTaylorImportance()
    elif criterion == "magnitude":
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    else:
        imp = tp.importance.GroupHessianImportance()

    # 2. Initialize a pruner with the model and the importance criterion
    ignored_layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == 1000:
            ignored_layers.append(m)  # DO NOT prune the final classifier!

    pruner = tp.pruner.BasePruner(  # We can always choose BasePruner if sparse training is not required.
        model,
        example_inputs,
        importance=imp,
        pruning_ratio=0.5,  # remove 50% channels, ResNet18 = {64, 128, 256, 512} => ResNet18_Half = {32, 64, 128, 256}
        # pruning_ratio_dict = {model.conv1: 0.2, model.layer2: 0.8}, # customized pruning ratios for layers or blocks
        ignored_layers=ignored_layers,
    )

    # 3. Prune & finetune the model
    base_macs, base_nparams = tp.utils.count_ops_and_params(model, example_inputs)
    if isinstance(imp, (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance)):
        # Taylor expansion requires gradients for importance estimation
        loss = model(example_inputs).sum()  # A dummy loss, please replace this line with your loss function and data!
        loss.backward()  # before pruner.step()

    pruner.step()
    macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)

    assert _resnet18_channels(model) == (32, 64, 128, 256)
    assert model.fc.in_features == 256 and model.fc.out_features == 1000
    assert model(example_inputs).shape == (1, 1000)
    # Halving every width divides conv MACs and parameters by about four.
    assert 0.2 < macs / base_macs < 0.3
    assert 0.2 < nparams / base_nparams < 0.3


def test_pruning_ratio_dict_comment_from_the_seed():
    model = resnet18()
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 64, 64),
                                  importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                  pruning_ratio_dict={model.conv1: 0.2, model.layer2: 0.8})
    pruner.step()
    assert model.conv1.out_channels == round(64 * 0.8)
    assert model.layer2[0].conv1.out_channels == round(128 * 0.2)
    assert model.layer3[0].conv1.out_channels == 128


def test_global_pruning_block():
    model = resnet18()
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 64, 64), importance=tp.importance.GroupMagnitudeImportance(),
                                  pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.fc])
    params = tp.utils.count_params(model)
    pruner.step()
    assert tp.utils.count_params(model) < params
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(set(widths)) > 4  # global ranking gives layers different ratios


def _digits_batches(n_batches=2, batch=16):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(n_batches)]


@pytest.mark.parametrize("pruner_cls", [tp.pruner.BNScalePruner, tp.pruner.GroupNormPruner, tp.pruner.GrowingRegPruner])
def test_sparse_training_block(pruner_cls):
    model = resnet18(num_classes=10)
    train_loader = _digits_batches()
    device = "cpu"
    epochs = 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = pruner_cls(model, torch.randn(1, 3, 32, 32), pruning_ratio=0.5, ignored_layers=[model.fc])
    weights_before = model.layer1[0].bn1.weight.detach().clone()

    for epoch in range(epochs):
        model.train()
        pruner.update_regularizer()  # <== initialize regularizer
        for i, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            out = model(data)
            loss = F.cross_entropy(out, target)
            loss.backward()  # after loss.backward()
            pruner.regularize(model, loss)  # <== for sparse training
            optimizer.step()  # before optimizer.step()

    assert not torch.equal(model.layer1[0].bn1.weight.detach(), weights_before)
    model.eval()
    pruner.step()
    assert model.layer1[0].conv1.out_channels == 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_interactive_pruning_block():
    model = resnet18()
    example_inputs = torch.randn(1, 3, 64, 64)
    iterative_steps = 3
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, iterative_steps=iterative_steps, ignored_layers=[model.fc])
    seen = []
    for i in range(iterative_steps):
        for group in pruner.step(interactive=True):  # Warning: groups must be handled sequentially.
            print(group)
            # do whatever you like with the group
            dep, idxs = group[0]  # get the idxs
            target_module = dep.target.module  # get the root module
            pruning_fn = dep.handler  # get the pruning function
            seen.append((target_module, pruning_fn, len(idxs)))
            group.prune()
            # group.prune(idxs=[0, 2, 6]) # It is even possible to change the pruning behaviour with the idxs parameter
        macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)
    assert all(fn == tp.prune_conv_out_channels for _, fn, _ in seen)
    assert model.conv1.out_channels == 32 and model.layer4[0].conv1.out_channels == 256
    assert model(example_inputs).shape == (1, 1000)


def test_soft_pruning_through_interactive_groups():
    model = resnet18()
    example_inputs = torch.randn(1, 3, 64, 64)
    pruner = tp.pruner.BasePruner(model, example_inputs, importance="l2", pruning_ratio=0.5, ignored_layers=[model.fc])
    params = tp.utils.count_params(model)
    zeroed = 0
    for group in pruner.step(interactive=True):
        dep, idxs = group[0]
        group.soft_prune()
        weight = dep.target.module.weight
        assert weight[idxs].abs().sum() == 0
        zeroed += len(idxs)
    assert tp.utils.count_params(model) == params  # shapes unchanged
    assert model.conv1.out_channels == 64 and zeroed > 0
    # The zeroed channels no longer influence the output: hard pruning them now changes nothing.
    reference = model.eval()(example_inputs)
    assert torch.isfinite(reference).all()
