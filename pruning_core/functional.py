"""Low-level pruning functions, as in the Torch-Pruning API.

Each is a bound method of a built-in handler, so ``dep.handler`` of a graph
member compares equal to them (``dep.handler == tp.prune_conv_out_channels``).
They prune one layer and fix nothing else; prefer a ``DependencyGraph``.
"""

from __future__ import annotations

from .builtin.handlers.attention import prune_multihead_attention_handler as _mha
from .builtin.handlers.batchnorm import prune_batchnorm_handler as _bn
from .builtin.handlers.conv import prune_conv_handler as _conv
from .builtin.handlers.conv import prune_depthwise_conv_handler as _dwconv
from .builtin.handlers.embedding import prune_embedding_handler as _emb
from .builtin.handlers.groupnorm import prune_groupnorm_handler as _gn
from .builtin.handlers.instancenorm import prune_instancenorm_handler as _in
from .builtin.handlers.layernorm import prune_layernorm_handler as _ln
from .builtin.handlers.linear import prune_linear_handler as _linear
from .builtin.handlers.parameter import prune_parameter_handler as _param
from .builtin.handlers.prelu import prune_prelu_handler as _prelu
from .builtin.handlers.rmsnorm import prune_rmsnorm_handler as _rms
from .builtin.handlers.rnn import prune_rnn_handler as _rnn

prune_conv_out_channels = _conv.prune_out_channels
prune_conv_in_channels = _conv.prune_in_channels
prune_depthwise_conv_out_channels = _dwconv.prune_out_channels
prune_depthwise_conv_in_channels = _dwconv.prune_in_channels
prune_batchnorm_out_channels = _bn.prune_out_channels
prune_batchnorm_in_channels = _bn.prune_in_channels
prune_linear_out_channels = _linear.prune_out_channels
prune_linear_in_channels = _linear.prune_in_channels
prune_prelu_out_channels = _prelu.prune_out_channels
prune_prelu_in_channels = _prelu.prune_in_channels
prune_layernorm_out_channels = _ln.prune_out_channels
prune_layernorm_in_channels = _ln.prune_in_channels
prune_embedding_out_channels = _emb.prune_out_channels
prune_embedding_in_channels = _emb.prune_in_channels
prune_parameter_out_channels = _param.prune_out_channels
prune_parameter_in_channels = _param.prune_in_channels
prune_multihead_attention_out_channels = _mha.prune_out_channels
prune_multihead_attention_in_channels = _mha.prune_in_channels
prune_groupnorm_out_channels = _gn.prune_out_channels
prune_groupnorm_in_channels = _gn.prune_in_channels
prune_instancenorm_out_channels = _in.prune_out_channels
prune_instancenorm_in_channels = _in.prune_in_channels
prune_rmsnorm_out_channels = _rms.prune_out_channels
prune_rmsnorm_in_channels = _rms.prune_in_channels
prune_lstm_out_channels = _rnn.prune_out_channels
prune_lstm_in_channels = _rnn.prune_in_channels

__all__ = [name for name in dir() if name.startswith("prune_")]
