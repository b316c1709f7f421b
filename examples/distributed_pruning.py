"""Prune inside a DistributedDataParallel training loop: torchrun --nproc_per_node=2 examples/distributed_pruning.py

Each rank trains on its own data and gathers Taylor scores from its own calibration batches; the
pruner reduces them across ranks, so every rank removes the same channels (checked before anything
is removed). The optimizer keeps its momentum for the kept channels, DDP is rebuilt around the
pruned model, and training goes on. CPU and gloo here; use "nccl" on GPUs. The README's
"Pruning in distributed training" shows this file from its imports on.
"""

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import pruning_core as tp
from pruning_core.distributed import rewrap


def batches(rank, count, size=8):
    generator = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(count):
        yield torch.randn(size, 3, 16, 16, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def train(ddp_model, optimizer, rank, steps):
    for x, y in batches(rank, steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp_model(x), y)
        loss.backward()
        optimizer.step()
    return loss.item()


def main():
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    ddp_model = DDP(model)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.05, momentum=0.9)
    train(ddp_model, optimizer, rank, 3)

    # Taylor scores from this rank's calibration batches (the pruner reduces them across ranks).
    optimizer.zero_grad()
    for x, y in batches(rank, 2):
        F.cross_entropy(ddp_model(x), y).backward()
    # Prune the wrapped module, not the wrapper: every rank removes the same channels.
    pruner = tp.pruner.BasePruner(ddp_model.module, torch.randn(1, 3, 16, 16),
                                  importance=tp.importance.GroupTaylorImportance(), pruning_ratio=0.5)
    pruner.step()
    tp.utils.prune_optimizer_state(optimizer, ddp_model.module)  # momentum of the kept channels
    ddp_model = rewrap(ddp_model)  # DDP held the old parameters
    loss = train(ddp_model, optimizer, rank, 3)

    flat = torch.cat([p.detach().reshape(-1) for p in ddp_model.module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if rank == 0:
        print(f"parameters after pruning: {flat.numel()}, loss: {loss:.4f}")
        print(f"replicas identical: {all(torch.equal(g, gathered[0]) for g in gathered)}")
    del ddp_model  # release DDP's reducer before the process group goes away
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
