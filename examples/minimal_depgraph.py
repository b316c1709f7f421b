"""The main job in one screen: prune a torchvision ResNet-18 with the DepGraph API.

``make demo`` runs it, then the command-line equivalent. Weights are random (nothing is downloaded).
"""

import torch
from torchvision.models import resnet18

import pruning_core as tp


def main() -> None:
    model = resnet18().eval()
    example_inputs = torch.randn(1, 3, 224, 224)
    macs_before, params_before = tp.utils.count_ops_and_params(model, example_inputs)

    # 1. Build the dependency graph of resnet18.
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)

    # 2. Group the layers coupled to model.conv1's output channels 2, 6 and 9.
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    print(group)

    # 3. Prune them all at once (unless that would empty a layer).
    if DG.check_pruning_group(group):
        group.prune()

    macs_after, params_after = tp.utils.count_ops_and_params(model, example_inputs)
    with torch.no_grad():
        output = model(example_inputs)
    print(f"conv1 now: {model.conv1}")
    print(f"output shape: {tuple(output.shape)}")
    print(f"params: {params_before:,} -> {params_after:,}")
    print(f"MACs:   {macs_before:,} -> {macs_after:,}")


if __name__ == "__main__":
    main()
