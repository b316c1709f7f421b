"""Random architectures for property-based tests and fuzzing.

``random_spec(rng)`` draws a list of block descriptions from a ``random.Random``
(for ``benchmarks/fuzz.py``, whose results are reproducible by seed); property
tests draw the same kind of list with hypothesis instead, from
:func:`pruning_core.testing.strategies.specs`, so that failures shrink.
``build(spec)`` turns a list into an ``nn.Module`` taking ``(1, 3, 16, 16)``
images. Every block family the core claims to support appears: convolutions
(grouped, depthwise, transposed), norms, residual adds, cat, split/chunk,
slicing, reshape/flatten/unflatten, permute, channel shuffle, pixel shuffle, attention,
squeeze-excite, maxout, a hand-written layer norm, unwrapped parameters and embeddings. ``oracle_safe(spec)`` says whether the zero-contribution
identity holds (no operation mixes channels other than through weights).
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Spec = List[Dict[str, Any]]

# Blocks whose output depends on channels only through weights and per-channel ops.
SAFE = {"conv", "residual", "concat", "shuffle_split", "view_shuffle", "depthwise", "grouped", "pixel_shuffle",
        "channels_last_linear", "squeeze_excite", "scale", "prelu", "upsample_cat", "slice_cat", "conv1d_path",
        "transpose_conv", "chunk_gate", "flatten_head", "unbind_sum", "split_uneven", "maxout", "split_written"}
UNSAFE = {"layernorm", "groupnorm", "attention", "instancenorm", "mean_mix", "rmsnorm", "embedding_add",
          "layernorm_by_hand"}
KINDS = sorted((SAFE | UNSAFE) - {"flatten_head"})


def _divisors(n: int) -> List[int]:
    return [d for d in range(2, n) if n % d == 0]


def random_spec(rng: random.Random, max_blocks: int = 5, allow_unsafe: bool = True) -> Spec:
    """A random list of blocks; channel counts are tracked so every block fits its input."""
    channels = rng.choice([8, 12, 16])
    spec: Spec = [{"kind": "stem", "out": channels}]
    kinds = KINDS if allow_unsafe else sorted(SAFE - {"flatten_head"})
    for _ in range(rng.randint(1, max_blocks)):
        kind = rng.choice(kinds)
        block: Dict[str, Any] = {"kind": kind, "in": channels}
        if kind in ("conv", "transpose_conv", "conv1d_path", "channels_last_linear", "maxout"):
            block["out"] = rng.choice([6, 8, 10, 12, 16])
        elif kind == "concat":
            block["a"], block["b"] = rng.choice([4, 6, 8]), rng.choice([4, 6, 8])
            block["out"] = block["a"] + block["b"]
        elif kind in ("shuffle_split", "chunk_gate", "split_written"):
            if channels % 2:
                kind = block["kind"] = "conv"
                block["out"] = 8
            else:
                block["out"] = channels
        elif kind == "view_shuffle":
            groups = _divisors(channels)
            if not groups:
                kind = block["kind"] = "residual"
            else:
                block["groups"] = rng.choice(groups)
            block["out"] = channels
        elif kind == "grouped":
            groups = _divisors(channels)
            block["groups"] = rng.choice(groups) if groups else 1
            block["out"] = block["groups"] * rng.choice([2, 3, 4])
        elif kind == "pixel_shuffle":
            block["out"] = rng.choice([4, 6, 8])
        elif kind == "squeeze_excite":
            block["hidden"] = rng.choice([2, 4])
            block["out"] = channels
        elif kind == "attention":
            heads = [h for h in (1, 2, 4) if channels % h == 0]
            block["heads"] = rng.choice(heads)
            block["out"] = channels
        elif kind == "groupnorm":
            block["groups"] = rng.choice([1] + _divisors(channels))
            block["out"] = channels
        elif kind == "upsample_cat":
            block["skip"] = rng.choice([4, 8])
            block["out"] = channels + block["skip"]
        elif kind == "slice_cat":
            block["keep"] = rng.randint(1, channels - 1)
            block["extra"] = rng.choice([4, 8])
            block["out"] = block["keep"] + block["extra"]
        elif kind == "unbind_sum":
            block["out"] = channels
        elif kind == "split_uneven":
            block["first"] = rng.randint(1, channels - 1)
            block["out"] = channels
        else:
            block["out"] = channels
        spec.append(block)
        channels = block["out"]
    spec.append({"kind": rng.choice(["pool_head", "flatten_head"]), "in": channels, "classes": 5})
    return spec


def oracle_safe(spec: Spec) -> bool:
    """Whether pruning equals zeroing the removed channels' parameters for this architecture."""
    return all(block["kind"] not in UNSAFE for block in spec)


class _Block(nn.Module):
    def __init__(self, block: Dict[str, Any]) -> None:
        super().__init__()
        self.kind = block["kind"]
        c, out = block.get("in", 3), block.get("out")
        k = self.kind
        if k == "stem":
            self.conv = nn.Conv2d(3, out, 3, padding=1)
            self.bn = nn.BatchNorm2d(out)
        elif k == "conv":
            self.conv = nn.Conv2d(c, out, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(out)
        elif k == "residual":
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 1)
        elif k == "concat":
            self.left = nn.Conv2d(c, block["a"], 1)
            self.right = nn.Conv2d(c, block["b"], 3, padding=1)
        elif k == "shuffle_split":
            self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU())
        elif k == "chunk_gate":
            self.conv = nn.Conv2d(c, c, 1)
        elif k == "maxout":
            self.conv = nn.Conv2d(c, 2 * out, 1)
        elif k == "split_written":
            self.half = c // 2  # the module's one int attribute of that value: followed, and set after pruning
            self.conv = nn.Conv2d(c // 2, c // 2, 1)
        elif k == "layernorm_by_hand":
            self.weight, self.bias = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
            self.normalized_shape = (c,)
        elif k == "view_shuffle":
            self.groups = block["groups"]
            self.conv = nn.Conv2d(c, c, 1)
        elif k == "depthwise":
            self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.bn = nn.BatchNorm2d(c)
        elif k == "grouped":
            self.conv = nn.Conv2d(c, out, 3, padding=1, groups=block["groups"])
        elif k == "transpose_conv":
            self.conv = nn.ConvTranspose2d(c, out, 2, stride=2)
        elif k == "pixel_shuffle":
            self.conv = nn.Conv2d(c, out * 4, 1)
            self.post = nn.Conv2d(out, out, 1)
        elif k == "channels_last_linear":
            self.fc = nn.Linear(c, out)
        elif k == "conv1d_path":
            self.conv = nn.Conv1d(c, out, 3, padding=1)
        elif k == "squeeze_excite":
            self.fc1 = nn.Linear(c, block["hidden"])
            self.fc2 = nn.Linear(block["hidden"], c)
        elif k == "scale":
            self.scale = nn.Parameter(torch.rand(c) + 0.5)
            self.shift = nn.Parameter(torch.randn(c, 1, 1))
        elif k == "prelu":
            self.act = nn.PReLU(c)
        elif k == "upsample_cat":
            self.skip = nn.Conv2d(c, block["skip"], 1)
            self.up = nn.Conv2d(c, c, 1)
        elif k == "slice_cat":
            self.keep = block["keep"]
            self.extra = nn.Conv2d(c, block["extra"], 1)
        elif k == "unbind_sum":
            self.conv = nn.Conv2d(c, c * 2, 1)
        elif k == "split_uneven":
            self.first = block["first"]
            self.conv = nn.Conv2d(self.first, self.first, 3, padding=1)
        elif k == "layernorm":
            self.norm = nn.LayerNorm(c)
        elif k == "rmsnorm":
            self.norm = nn.RMSNorm(c)
        elif k == "groupnorm":
            self.norm = nn.GroupNorm(block["groups"], c)
        elif k == "instancenorm":
            self.norm = nn.InstanceNorm2d(c, affine=True)
        elif k == "attention":
            self.attn = nn.MultiheadAttention(c, block["heads"], batch_first=True)
        elif k == "mean_mix":
            self.conv = nn.Conv2d(c, c, 1)
        elif k == "embedding_add":
            self.embed = nn.Embedding(16 * 16, c)
        elif k == "pool_head":
            self.fc = nn.Linear(c, block["classes"])
        elif k == "flatten_head":
            self.fc = nn.Linear(c * 4 * 4, block["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per block kind
        k = self.kind
        if k in ("stem", "conv", "depthwise"):
            return F.relu(self.bn(self.conv(x)))
        if k == "residual":
            return F.relu(x + self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if k == "concat":
            return torch.cat([self.left(x), self.right(x)], dim=1)
        if k == "shuffle_split":
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch(b)], dim=1)
            n, c, h, w = out.shape
            return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        if k == "chunk_gate":
            y = self.conv(x)
            a, b = torch.chunk(y, 2, dim=1)
            return torch.cat([a * torch.sigmoid(b), b], dim=1)
        if k == "maxout":
            return self.conv(x).unflatten(1, (-1, 2)).amax(2)
        if k == "split_written":
            a, b = torch.split(x, self.half, dim=1)
            return torch.cat([self.conv(a), b], dim=1)
        if k == "layernorm_by_hand":
            y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias)
            return y.permute(0, 3, 1, 2)
        if k == "view_shuffle":
            y = self.conv(x)
            n, c, h, w = y.shape
            return y.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)
        if k in ("grouped", "transpose_conv"):
            y = self.conv(x)
            return F.avg_pool2d(y, 2) if k == "transpose_conv" else y
        if k == "pixel_shuffle":
            return F.avg_pool2d(self.post(F.pixel_shuffle(self.conv(x), 2)), 2)
        if k == "channels_last_linear":
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if k == "conv1d_path":
            n, c, h, w = x.shape
            return self.conv(x.flatten(2)).unflatten(2, (h, w))
        if k == "squeeze_excite":
            s = x.mean(dim=(2, 3))
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
            return x * s[:, :, None, None]
        if k == "scale":
            return x * self.scale.view(1, -1, 1, 1) + self.shift
        if k == "prelu":
            return self.act(x)
        if k == "upsample_cat":
            small = F.max_pool2d(self.up(x), 2)
            return torch.cat([F.interpolate(small, scale_factor=2.0, mode="nearest"), self.skip(x)], dim=1)
        if k == "slice_cat":
            return torch.cat([x[:, : self.keep], self.extra(x)], dim=1)
        if k == "split_uneven":
            a, b = torch.split(x, [self.first, x.shape[1] - self.first], dim=1)
            return torch.cat([self.conv(a), b], dim=1)
        if k == "unbind_sum":
            y = self.conv(x)
            n, c2, h, w = y.shape
            first, second = y.view(n, 2, c2 // 2, h, w).unbind(1)
            return first + second
        if k in ("layernorm", "rmsnorm"):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if k in ("groupnorm", "instancenorm"):
            return self.norm(x)
        if k == "attention":
            n, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)
            out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
            return (tokens + out).transpose(1, 2).reshape(n, c, h, w)
        if k == "mean_mix":
            return self.conv(x) + x.mean(dim=1, keepdim=True)
        if k == "embedding_add":
            n, c, h, w = x.shape
            positions = torch.arange(h * w, device=x.device)
            return x + self.embed(positions).t().reshape(1, c, h, w)
        if k == "pool_head":
            return self.fc(x.mean(dim=(2, 3)))
        if k == "flatten_head":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 4), 1))
        raise ValueError(f"unknown block {k}")


class RandomNet(nn.Module):
    """A sequence of random blocks built from a spec."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = nn.Sequential(*[_Block(block) for block in spec])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def build(spec: Spec, seed: int = 0) -> Tuple[nn.Module, torch.Tensor]:
    """The model for ``spec`` (eval mode, random weights) and an example input."""
    torch.manual_seed(seed)
    model = RandomNet(spec).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Non-trivial statistics, so that mistakes in pruning them show up.
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(1, 3, 16, 16)
