"""Base class and helpers for layer handlers (the objects that physically prune a layer).

A handler is stateless: every method takes the layer it acts on. Subclass
:class:`BasePruningFunc` and implement ``get_out_channels``, ``get_in_channels``,
``_prune_out`` and ``_prune_in``; validation of the indices is done here, once.
Handlers replace parameters with new ``nn.Parameter`` objects rather than
editing them in place, which lets a failed pruning step restore the old ones.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import nn

from .errors import EmptyLayerError, InvalidIndicesError
from .lineage import note_slice

Indices = Union[Sequence[int], torch.Tensor, range]


class SortedIndices(list):
    """A list of sorted, distinct channel indices that remembers its tensor form.

    The graph hands handlers plain lists of ints (the same call for every handler); this
    subclass lets :func:`as_index_tensor` skip converting and re-validating a list the graph
    made, unless a handler changed it in between.
    """

    __slots__ = ("_tensor", "_snapshot")

    def __init__(self, values: torch.Tensor) -> None:
        values = values.detach().to("cpu", torch.long).reshape(-1)
        if values.numel() > 1 and not bool((values[1:] > values[:-1]).all()):
            values = torch.unique(values)
        items = values.tolist()
        super().__init__(items)
        self._tensor, self._snapshot = values, items

    def tensor_if_unchanged(self) -> Optional[torch.Tensor]:
        """The tensor form, or None when the list was edited since it was made."""
        return self._tensor.clone() if list.__eq__(self, self._snapshot) else None


def as_index_tensor(idxs: Any, size: int, where: str) -> torch.Tensor:
    """Validate pruning indices and return them sorted as a CPU ``LongTensor``."""
    known = idxs.tensor_if_unchanged() if type(idxs) is SortedIndices else None
    if known is not None:
        if known.numel() and (int(known[0]) < 0 or int(known[-1]) >= size):
            bad = int(known[0]) if int(known[0]) < 0 else int(known[-1])
            raise InvalidIndicesError(
                f"{where}: pruning index {bad} is out of range for {size} channels (valid: 0..{size - 1})")
        return known
    if isinstance(idxs, torch.Tensor):
        if idxs.dtype in (torch.bool,) or idxs.is_floating_point() or idxs.is_complex():
            raise InvalidIndicesError(f"{where}: pruning indices must be integers, got a {idxs.dtype} tensor")
        if idxs.ndim > 1:
            raise InvalidIndicesError(f"{where}: pruning indices must be one-dimensional, got shape {tuple(idxs.shape)}")
        values = idxs.detach().to("cpu", torch.long).reshape(-1)
    else:
        if isinstance(idxs, (str, bytes)) or not isinstance(idxs, Iterable):
            raise InvalidIndicesError(f"{where}: pruning indices must be a list of ints, got {type(idxs).__name__}")
        items = list(idxs)
        if not all(type(item) is int for item in items):  # fast path for plain ints
            for item in items:
                if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                    raise InvalidIndicesError(
                        f"{where}: pruning indices must be ints, got {item!r} ({type(item).__name__})")
            items = [int(i) for i in items]
        values = torch.tensor(items, dtype=torch.long)
    if values.numel():
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= size:
            raise InvalidIndicesError(
                f"{where}: pruning index {low if low < 0 else high} is out of range for {size} channels "
                f"(valid: 0..{size - 1})")
        unique = torch.unique(values)
        if unique.numel() != values.numel():
            raise InvalidIndicesError(f"{where}: pruning indices contain duplicates")
        values = unique
    return values


def keep_indices(idxs: torch.Tensor, size: int) -> torch.Tensor:
    """The complement of sorted removal indices ``idxs`` in ``range(size)``."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[idxs] = False
    return torch.nonzero(mask).reshape(-1)


def select(tensor: Optional[torch.Tensor], dim: int, keep: torch.Tensor) -> Optional[torch.Tensor]:
    """``tensor.index_select(dim, keep)`` on the tensor's own device (works on ``meta``)."""
    if tensor is None:
        return None
    return torch.index_select(tensor.detach(), dim, keep.to(tensor.device))


def replace_tensor(module: nn.Module, name: str, value: Optional[torch.Tensor]) -> None:
    """Put ``value`` in place of the parameter or buffer ``name``, keeping its kind and ``requires_grad``."""
    if value is None:
        return
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def prune_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Keep only ``keep`` along ``dim`` of the parameter or buffer ``name`` (no-op if absent)."""
    tensor = getattr(module, name, None)
    if isinstance(tensor, torch.Tensor):
        replace_tensor(module, name, select(tensor, dim, keep))
        new = module._parameters.get(name) if name in module._parameters else None
        if new is not None and new is not tensor:
            note_slice(tensor, new, dim, keep)  # optimizer state can follow (utils.prune_optimizer_state)


def block_indices(idxs: torch.Tensor, block: int, copies: int) -> torch.Tensor:
    """Indices ``idxs`` repeated in each of ``copies`` consecutive blocks of size ``block``."""
    return torch.cat([idxs + i * block for i in range(copies)]) if copies > 1 else idxs


def grouped_removal(idxs: torch.Tensor, total: int, groups: int, where: str) -> Tuple[str, torch.Tensor]:
    """Classify removal ``idxs`` of a dim made of ``groups`` equal blocks.

    Returns ``("uniform", local_idxs)`` when every block loses the same local
    positions, or ``("groups", group_idxs)`` when whole blocks are removed.
    """
    per = total // groups
    local = idxs % per
    owner = idxs // per
    if idxs.numel() == 0:
        return "uniform", idxs
    counts = torch.bincount(owner, minlength=groups)
    if bool(((counts == 0) | (counts == per)).all()):
        return "groups", torch.nonzero(counts == per).reshape(-1)
    first = torch.unique(local[owner == owner[0]])
    if bool((counts == first.numel()).all()):
        for g in range(groups):
            if not torch.equal(torch.unique(local[owner == g]), first):
                break
        else:
            return "uniform", first
    raise InvalidIndicesError(
        f"{where}: channels come in {groups} groups of {per}; remove the same positions in every group "
        "or whole groups")


@runtime_checkable
class LayerHandler(Protocol):
    """The contract every layer handler meets (built-in or from a plugin): four methods.

    ``prune_out_channels(layer, idxs)`` and ``prune_in_channels(layer, idxs)`` remove channels
    (``idxs``: a sorted list of distinct ints) and return the layer; ``get_out_channels`` and
    ``get_in_channels`` report the sizes. If ``prune_in_channels`` is the same function as
    ``prune_out_channels``, the layer's input and output channels are one set (BatchNorm).
    Every optional method and attribute is listed in :data:`OPTIONAL_HANDLER_METHODS`.
    """

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any: ...

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> Any: ...

    def get_out_channels(self, layer: Any) -> int: ...

    def get_in_channels(self, layer: Any) -> int: ...


#: Optional handler methods and attributes, with what the graph and the criteria use them for.
OPTIONAL_HANDLER_METHODS: Dict[str, str] = {
    "channel_dim": "channel_dim(layer, tensor, side): which dim of an input ('in') or output ('out') tensor holds "
                   "the channels, when the size alone is ambiguous",
    "tensor_channel_dims": "tensor_channel_dims(layer, inputs, outputs): for layers with several tensor inputs or "
                           "outputs, ([(input_index, dim[, repeat, side]), ...], [(output_index, dim, ...), ...])",
    "channel_groups": "channel_groups(layer): the channels form this many independent groups (grouped convolutions)",
    "channel_params": "channel_params(layer, side): [(tensor, dim, to_channels), ...], the parameter slices each "
                      "channel owns, for importance scores; without it they are found by probing a copy",
    "specialize": "specialize(layer): the handler to use for this particular layer (a depthwise convolution)",
    "refresh_attributes": "refresh_attributes(layer): set size attributes from the weights after code that uses "
                          "the weight directly had it pruned",
    "name": "name: how messages name the handler",
    "shape_preserving": "shape_preserving = True: the output is shaped like the input, so meta runs may skip it",
    "trace_in_eval": "trace_in_eval = True: trace and verify the layer in eval mode (BatchNorm)",
    "replaces_tensors": "replaces_tensors = True: the handler puts new tensors in place of pruned ones instead of "
                        "editing them, so undoing a step keeps the old objects instead of copies of their data",
    "default_root": "default_root = True: the layer roots groups in DependencyGraph.get_all_groups() by default",
    "size_attributes": "size_attributes = {'in_features': 'in', ...}: attributes holding the layer's channel counts; "
                       "a forward that reads them to size a reshape (view(-1, conv.in_channels)) is followed",
}


class BasePruningFunc:
    """Base class for layer handlers.

    The public methods validate indices and return the layer; subclasses
    implement ``_prune_out(layer, idxs)`` and ``_prune_in(layer, idxs)`` with
    sorted, validated removal indices. The optional methods and attributes a
    handler may add are listed in :data:`OPTIONAL_HANDLER_METHODS`.
    """

    name: Optional[str] = None
    replaces_tensors = True  # the helpers below (prune_tensor) replace tensors; override if you edit in place
    default_root = False

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output channels ``idxs`` of ``layer`` and return it."""
        checked = self._checked(layer, idxs, "out")
        if checked.numel():
            self._prune_out(layer, checked)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input channels ``idxs`` of ``layer`` and return it."""
        checked = self._checked(layer, idxs, "in")
        if checked.numel():
            self._prune_in(layer, checked)
        return layer

    def _checked(self, layer: nn.Module, idxs: Indices, side: str) -> torch.Tensor:
        size = int(self.get_out_channels(layer) if side == "out" else self.get_in_channels(layer))
        where = f"{type(layer).__name__} {side}put channels"
        checked = as_index_tensor(idxs, size, where)
        if checked.numel() >= size and size > 0:
            raise EmptyLayerError(
                f"{where}: removing {checked.numel()} of {size} channels would leave none; keep at least one")
        return checked

    def get_out_channels(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def get_in_channels(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def _prune_out(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        raise NotImplementedError

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        raise NotImplementedError

    def _prune_parameter_and_grad(self, weight: nn.Parameter, keep_idxs: Sequence[int], pruning_dim: int
                                  ) -> nn.Parameter:
        """A new parameter holding only ``keep_idxs`` along ``pruning_dim``, its gradient sliced alike.

        Torch-Pruning's helper for custom handlers; ``weight`` itself is not changed.
        """
        keep = torch.as_tensor(list(keep_idxs), dtype=torch.long, device=weight.device)
        pruned = nn.Parameter(torch.index_select(weight.detach(), pruning_dim, keep), requires_grad=weight.requires_grad)
        if weight.grad is not None:
            pruned.grad = torch.index_select(weight.grad.detach(), pruning_dim, keep.to(weight.grad.device))
        note_slice(weight, pruned, pruning_dim, keep)
        return pruned

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CoupledPruningFunc(BasePruningFunc):
    """A handler whose layer has one channel set for input and output (BatchNorm, LayerNorm...)."""

    prune_in_channels = BasePruningFunc.prune_out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)

    def _prune_in(self, layer: nn.Module, idxs: torch.Tensor) -> None:
        self._prune_out(layer, idxs)


def param_list(*items: Tuple[Optional[torch.Tensor], int]) -> List[Tuple[torch.Tensor, int, Any]]:
    """``channel_params`` helper: skip absent tensors."""
    return [(t, d, None) for t, d in items if isinstance(t, torch.Tensor)]
