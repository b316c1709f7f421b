"""Models written the way papers' reference code and Torch-Pruning's recipes write them, at ratio 0.5.

No plugin knows these classes: a ConvNeXt whose LayerNorm calls ``F.layer_norm`` with a
``normalized_shape`` tuple it keeps, a ViT whose attention splits heads with einops, one that
uses ``unflatten(-1, (3, heads, -1))`` (einops also once a graph of another copy was built in the same
process), and Torch-Pruning's ViT recipe (``num_heads={m.qkv: ...}``,
then ``m.num_heads = pruner.num_heads[m.qkv]``) on 3 and 4 heads, and nanoGPT's attention, which
splits q, k and v at a plain attribute (``split(self.n_embd, dim=2)``). Each is pruned with
``MagnitudePruner(pruning_ratio=0.5)`` (the classifier ignored) and the fraction of parameters kept
is printed, with whether the pruned model still runs; an exception is reported as the outcome.

    python benchmarks/hand_written.py --output benchmarks/results/hand-written.md
"""

from __future__ import annotations

import argparse
import datetime
from typing import Callable, Dict, Tuple

import einops
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
import run_info


class HandLayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.normalized_shape = (dim,)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, 1e-6)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = HandLayerNorm(dim)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims: Tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 4, 4)]
        for i, dim in enumerate(dims):
            if i:
                layers.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
            layers += [ConvNeXtBlock(dim), ConvNeXtBlock(dim)]
        self.body, self.norm, self.head = nn.Sequential(*layers), nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], 10)

    def forward(self, x):
        return self.head(self.norm(self.body(x).mean((2, 3))))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, split: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.split = heads, dim // heads, split
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        if self.split == "einops":
            q, k, v = (einops.rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in self.qkv(x).chunk(3, -1))
        elif self.split == "unflatten":
            q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # attributes, as timm's Attention
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class GPTAttention(nn.Module):
    """nanoGPT's attention: q, k and v split at the plain attribute ``self.n_embd``."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPT(nn.Module):
    def __init__(self, n_embd: int = 96, n_head: int = 4, depth: int = 4, vocab: int = 100) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(64, n_embd)
        self.attns = nn.ModuleList(GPTAttention(n_embd, n_head) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                                nn.Linear(4 * n_embd, n_embd)) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for attn, mlp in zip(self.attns, self.mlps):
            x = x + mlp(x + attn(x))
        return self.head(self.norm(x))


class ViT(nn.Module):
    def __init__(self, split: str, heads: int = 4, dim: int = 96, depth: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.attns = nn.ModuleList(Attention(dim, heads, split) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                nn.Linear(4 * dim, dim)) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        for attn, mlp in zip(self.attns, self.mlps):
            x = x + mlp(x + attn(x))
        return self.head(self.norm(x).mean(1))


def plain(model: nn.Module, x: torch.Tensor) -> None:
    tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                              ignored_layers=[model.head]).step()


def after_another_graph(model: nn.Module, x: torch.Tensor) -> None:
    """As ``plain``, once a graph of another copy was built in the process (an earlier pruning round)."""
    other = type(model)(model.attns[0].split).eval()
    tp.DependencyGraph().build_dependency(other, x)
    plain(model, x)


def torch_pruning_recipe(model: nn.Module, x: torch.Tensor) -> None:
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.head],
                                  num_heads={m.qkv: m.num_heads for m in model.attns})
    for group in pruner.step(interactive=True):
        group.prune()
    for m in model.attns:
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)


CASES: Dict[str, Tuple[Callable[[], nn.Module], Callable[[nn.Module, torch.Tensor], None]]] = {
    "ConvNeXt, reference code's LayerNorm (F.layer_norm, normalized_shape tuple)": (ConvNeXt, plain),
    "ViT, heads split by einops.rearrange": (lambda: ViT("einops"), plain),
    "ViT, heads split by einops.rearrange, after an earlier graph": (lambda: ViT("einops"), after_another_graph),
    "ViT, heads split by unflatten(-1, (3, heads, -1))": (lambda: ViT("unflatten"), plain),
    "GPT, nanoGPT's attention (split at self.n_embd)": (GPT, plain),
    "ViT, Torch-Pruning's recipe, 4 heads": (lambda: ViT("attributes", heads=4), torch_pruning_recipe),
    "ViT, Torch-Pruning's recipe, 3 heads": (lambda: ViT("attributes", heads=3), torch_pruning_recipe),
}


def measure(build: Callable[[], nn.Module], prune: Callable[[nn.Module, torch.Tensor], None]) -> Tuple[str, str]:
    """(parameters kept, whether the pruned model runs) for one case."""
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randint(0, 100, (2, 16)) if isinstance(model, GPT) else torch.randn(2, 3, 64, 64)
    before = sum(p.numel() for p in model.parameters())
    try:
        prune(model, x)
    except Exception as exc:  # an outcome to report, not to hide
        return "-", f"{type(exc).__name__}: {str(exc)[:80]}"
    kept = f"{100 * sum(p.numel() for p in model.parameters()) / before:.1f}%"
    try:
        with torch.no_grad():
            model(x)
        return kept, "yes"
    except Exception as exc:
        return kept, f"no ({type(exc).__name__}: {str(exc)[:80]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the markdown table to this file")
    args = parser.parse_args()
    lines = ["# Hand-written models at ratio 0.5: parameters kept", "",
             f"Command: `python benchmarks/hand_written.py --output benchmarks/results/hand-written.md`, "
             f"{datetime.date.today()}, pruning_core at {run_info.commit()}, einops {einops.__version__}, "
             f"torch {torch.__version__}.", "",
             "| model | kept | pruned model runs |", "|---|---:|---|"]
    for name, (build, prune) in CASES.items():
        kept, runs = measure(build, prune)
        lines.append(f"| {name} | {kept} | {runs} |")
    run_info.publish("\n".join(lines) + "\n", args.output)


if __name__ == "__main__":
    main()
