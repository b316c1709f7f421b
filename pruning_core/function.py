"""Torch-Pruning's ``tp.function`` module: per-layer pruner classes and the low-level ``prune_*`` functions.

Code written for Torch-Pruning subclasses these classes to prune a custom layer and
passes an instance as ``customized_pruners={MyLayer: MyPruner()}``. Here each name is
the built-in handler class itself (``tp.function.LinearPruner`` *is* the class that
prunes every ``nn.Linear``), so a subclass inherits the real behaviour, and the graph
calls the subclass's ``prune_out_channels``/``prune_in_channels`` for the layers it is
registered for.

Torch-Pruning spells some names differently from this project's classes; both
spellings are exported (``BatchnormPruner`` and ``BatchNormPruner``, ...).
"""

from __future__ import annotations

from .builtin.handlers.attention import MultiheadAttentionPruner
from .builtin.handlers.batchnorm import BatchNormPruner
from .builtin.handlers.conv import ConvPruner, DepthwiseConvPruner
from .builtin.handlers.embedding import EmbeddingPruner
from .builtin.handlers.groupnorm import GroupNormPruner
from .builtin.handlers.instancenorm import InstanceNormPruner
from .builtin.handlers.layernorm import LayerNormPruner
from .builtin.handlers.linear import LinearPruner
from .builtin.handlers.parameter import ParameterPruner
from .builtin.handlers.prelu import PReLUPruner
from .builtin.handlers.rmsnorm import RMSNormPruner
from .builtin.handlers.rnn import RNNPruner
from .functional import *  # noqa: F401,F403 - every prune_* function, listed in functional.__all__
from .functional import __all__ as _prune_functions
from .layer_handler import BasePruningFunc, CoupledPruningFunc

# Torch-Pruning's spellings of the same classes.
BatchnormPruner = BatchNormPruner
LayernormPruner = LayerNormPruner
LSTMPruner = RNNPruner

__all__ = [
    "BasePruningFunc", "CoupledPruningFunc",
    "LinearPruner", "ConvPruner", "DepthwiseConvPruner", "BatchnormPruner", "BatchNormPruner", "LayernormPruner",
    "LayerNormPruner", "GroupNormPruner", "InstanceNormPruner", "PReLUPruner", "EmbeddingPruner",
    "MultiheadAttentionPruner", "LSTMPruner", "RNNPruner", "RMSNormPruner", "ParameterPruner",
    *_prune_functions,
]
