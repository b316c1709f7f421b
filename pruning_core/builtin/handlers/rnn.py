"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: output channels are ``hidden_size`` (shared by all layers)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from ...hookspecs import hookimpl
from ...layer_handler import BasePruningFunc, block_indices, keep_indices, prune_tensor
from ...records import LayerHandlerSpec

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _directions(layer: nn.Module) -> List[str]:
    return ["", "_reverse"] if layer.bidirectional else [""]


class _GateRows:
    """(gates*H, ...) -> (H, gates, ...): dim 0 lists hidden channels."""

    def __init__(self, gates: int, hidden: int) -> None:
        self.gates, self.hidden = gates, hidden

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(self.gates, self.hidden, *tensor.shape[1:]).transpose(0, 1)


class _DirectionCols:
    """(rows, dirs*H) -> (H, rows, dirs): dim 0 lists hidden channels."""

    def __init__(self, dirs: int, hidden: int) -> None:
        self.dirs, self.hidden = dirs, hidden

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], self.dirs, self.hidden).permute(2, 0, 1)


class RNNPruner(BasePruningFunc):
    """Prunes hidden units in every layer and direction (all gates), or input features of layer 0."""

    default_root = True  # a root of DependencyGraph.get_all_groups() by default, as in Torch-Pruning

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def tensor_channel_dims(self, layer: nn.Module, inputs: Any, outputs: Any):
        if getattr(layer, "proj_size", 0):
            return [], []  # projected LSTMs are not supported: their channels stay frozen
        dirs = 2 if layer.bidirectional else 1
        ins = [(0, inputs[0].ndim - 1)] + [(i, inputs[i].ndim - 1, 1, "out") for i in range(1, len(inputs))]
        outs = [(0, outputs[0].ndim - 1, dirs)] + [(i, outputs[i].ndim - 1) for i in range(1, len(outputs))]
        return ins, outs

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        hidden = layer.hidden_size
        gates = _GATES[layer.mode]
        keep = keep_indices(idxs, hidden)
        keep_gates = block_indices(keep, hidden, gates)
        dirs = _directions(layer)
        keep_inputs = block_indices(keep, hidden, len(dirs))
        for index in range(layer.num_layers):
            for suffix in dirs:
                tag = f"l{index}{suffix}"
                prune_tensor(layer, f"weight_ih_{tag}", 0, keep_gates)
                if index > 0:
                    prune_tensor(layer, f"weight_ih_{tag}", 1, keep_inputs)
                prune_tensor(layer, f"weight_hh_{tag}", 0, keep_gates)
                prune_tensor(layer, f"weight_hh_{tag}", 1, keep)
                prune_tensor(layer, f"bias_ih_{tag}", 0, keep_gates)
                prune_tensor(layer, f"bias_hh_{tag}", 0, keep_gates)
        layer.hidden_size = keep.numel()
        layer._init_flat_weights()

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        keep = keep_indices(idxs, layer.input_size)
        for suffix in _directions(layer):
            prune_tensor(layer, f"weight_ih_l0{suffix}", 1, keep)
        layer.input_size = keep.numel()
        layer._init_flat_weights()

    def channel_params(self, layer: nn.Module, side: str) -> List[Tuple[torch.Tensor, int, Any]]:
        hidden = layer.hidden_size
        gate_rows = _GateRows(_GATES[layer.mode], hidden)
        dirs = _directions(layer)
        params: List[Tuple[torch.Tensor, int, Any]] = []
        for suffix in dirs:
            if side == "in":
                params.append((getattr(layer, f"weight_ih_l0{suffix}"), 1, None))
                continue
            for index in range(layer.num_layers):
                tag = f"l{index}{suffix}"
                params.append((getattr(layer, f"weight_ih_{tag}"), 0, gate_rows))
                params.append((getattr(layer, f"weight_hh_{tag}"), 0, gate_rows))
                params.append((getattr(layer, f"weight_hh_{tag}"), 1, None))
                if index > 0:
                    params.append((getattr(layer, f"weight_ih_{tag}"), 0, _DirectionCols(len(dirs), hidden)))
                for name in (f"bias_ih_{tag}", f"bias_hh_{tag}"):
                    bias: Optional[torch.Tensor] = getattr(layer, name, None)
                    if bias is not None:
                        params.append((bias, 0, gate_rows))
        return params


prune_rnn_handler = RNNPruner()


@hookimpl
def register_layer_handlers():
    return [LayerHandlerSpec(target=cls, handler=prune_rnn_handler) for cls in (nn.LSTM, nn.GRU, nn.RNN)]
