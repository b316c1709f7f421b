"""Layer-type names of Torch-Pruning's ``tp.ops``, for scripts that pass them as ``root_module_types``.

``root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)`` roots groups only at convolutions
and linear layers. Each name is the ``torch.nn`` class (or base class) it stands for.
"""

from __future__ import annotations

from torch import nn

TORCH_CONV = nn.modules.conv._ConvNd
TORCH_LINEAR = nn.Linear
TORCH_BATCHNORM = nn.modules.batchnorm._BatchNorm
TORCH_LAYERNORM = nn.LayerNorm
TORCH_GROUPNORM = nn.GroupNorm
TORCH_INSTANCENORM = nn.modules.instancenorm._InstanceNorm
TORCH_RMSNORM = nn.RMSNorm
TORCH_PRELU = nn.PReLU
TORCH_EMBED = nn.Embedding
TORCH_MHA = nn.MultiheadAttention
TORCH_LSTM = nn.LSTM
TORCH_PARAMETER = nn.Parameter

__all__ = ["TORCH_CONV", "TORCH_LINEAR", "TORCH_BATCHNORM", "TORCH_LAYERNORM", "TORCH_GROUPNORM", "TORCH_INSTANCENORM",
           "TORCH_RMSNORM", "TORCH_PRELU", "TORCH_EMBED", "TORCH_MHA", "TORCH_LSTM", "TORCH_PARAMETER"]
