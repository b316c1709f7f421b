"""Repairing a layer whose input channels are removed, from its calibration statistics.

``bias`` (FLAP): the removed channels' mean contribution moves into the bias,
``b' = b + W_R · E[x_R]``, so the output keeps its mean.

``lstsq``: the kept columns are refit in closed form to reproduce the dense
output on the calibration data, with an intercept::

    minimise  E || W x + b - W'_K x_K - b' ||²  +  λ || W'_K - W_K ||²

whose solution is ``W'_K = W_K + W_R C_RK (C_KK + λI)⁻¹`` and
``b' = b + W_R μ_R - (W'_K - W_K) μ_K``, with ``C`` the covariance of the
layer's input features and ``μ`` their mean. Regularising toward ``W_K``
(rather than toward zero) means the damped solution is never worse than the
``bias`` one on the calibration data, which is never worse than no
compensation. ``λ`` is ``damping`` times the mean of the covariance diagonal.
A layer without a bias that cannot take one gets the uncentred version
(second moments, no intercept).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..calibration.forms import LinearForm
from ..calibration.statistics import LayerStatistics
from ..errors import ConfigurationError

METHODS = ("bias", "lstsq")


def check_method(value: Optional[str]) -> Optional[str]:
    if value is None or value in METHODS:
        return value
    raise ConfigurationError(f"compensation must be None, 'bias' or 'lstsq', got {value!r}")


def compensated(original: LinearForm, current: LinearForm, stats: LayerStatistics, removed: torch.Tensor,
                in_map: torch.Tensor, out_map: torch.Tensor, method: str, damping: float = 0.01
                ) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """New ``(weight matrix, bias)`` for a layer about to lose its current input channels ``removed``.

    The solution is computed from the layer as it was when the statistics were
    taken (``original``) and every input channel it has lost since, so several
    groups removing inputs of the same layer in one step give the joint
    solution, in any order. ``in_map[c]`` is the statistics index of current
    input channel ``c`` and ``out_map[r]`` the original row of current output
    ``r``. The result has the current layer's shape; the columns about to be
    removed keep their values (pruning deletes them next). Returns ``None``
    when the layer's layout no longer matches the statistics.
    """
    groups, per = current.groups, current.features_per_channel
    channels, rows = in_map.numel(), out_map.numel()
    if (not stats.has_features or channels % groups or rows % groups or rows != current.out_channels
            or current.features_per_group != channels // groups * per or per != original.features_per_channel
            or stats.channels is None or stats.channels % original.groups):
        return None
    base_weight, device = original.weight.to(torch.float64), current.weight.device
    weight = current.weight.to(torch.float64).clone()
    base_bias = original.bias.to(torch.float64) if original.bias is not None else None
    with_intercept = base_bias is not None or current.accepts_bias
    bias = current.bias.to(torch.float64).clone() if current.bias is not None else \
        torch.zeros(rows, dtype=torch.float64, device=device)
    leaving = torch.zeros(channels, dtype=torch.bool)
    leaving[removed.cpu()] = True
    stat_per_group, base_rows_per_group = stats.channels // original.groups, base_weight.shape[0] // original.groups
    per_group, rows_per_group = channels // groups, rows // groups
    offsets = torch.arange(per)
    means = stats.feature_mean().to(device)
    matrices = None
    if method == "lstsq":
        matrices = (stats.covariance() if with_intercept else stats.feature_moment()).to(device)
    for g in range(groups):
        local = slice(g * per_group, (g + 1) * per_group)
        if not bool(leaving[local].any()):
            continue
        sources, out_rows = in_map[local], out_map[g * rows_per_group:(g + 1) * rows_per_group]
        g0 = int(sources[0]) // stat_per_group
        if bool((sources // stat_per_group != g0).any()) or bool((out_rows // base_rows_per_group != g0).any()):
            return None  # the grouping changed since calibration
        staying = torch.zeros(stat_per_group, dtype=torch.bool)
        staying[sources[~leaving[local]] % stat_per_group] = True
        kept_f = _features(torch.nonzero(staying).reshape(-1), offsets).to(device)
        gone_f = _features(torch.nonzero(~staying).reshape(-1), offsets).to(device)
        here_f = _features(torch.nonzero(~leaving[local]).reshape(-1), offsets).to(device)
        old = base_weight[out_rows.to(device)]
        w_gone, w_kept = old[:, gone_f], old[:, kept_f]
        mu = means[g0]
        shift = w_gone @ mu[gone_f]
        if matrices is not None and kept_f.numel():
            matrix = matrices[g0]
            damp = damping * float(matrix.diagonal().mean().clamp_min(0))
            update = _solve_spd(matrix[kept_f][:, kept_f], (w_gone @ matrix[gone_f][:, kept_f]).t(), damp).t()
            w_kept = w_kept + update
            shift = shift - update @ mu[kept_f]
        target = torch.arange(g * rows_per_group, (g + 1) * rows_per_group, device=device)
        weight[target.unsqueeze(1), here_f.unsqueeze(0)] = w_kept
        if with_intercept:
            start = base_bias[out_rows.to(device)] if base_bias is not None else 0.0
            bias[target] = start + shift
    return weight, (bias if with_intercept else None)


def _features(channels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Feature indices of local input channels: channel ``l`` owns ``[l*p, (l+1)*p)``."""
    return (channels.unsqueeze(1) * offsets.numel() + offsets).reshape(-1)


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor, damp: float) -> torch.Tensor:
    """``(matrix + damp I)⁻¹ rhs`` for a covariance block; more jitter if it is singular."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    scale = float(matrix.diagonal().abs().mean()) or 1.0
    jitter = damp
    for attempt in range(8):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, factor)
        jitter = max(jitter * 10, scale * 1e-10 * 10 ** attempt)
    return torch.linalg.lstsq(matrix + jitter * eye, rhs).solution


__all__ = ["METHODS", "check_method", "compensated"]
