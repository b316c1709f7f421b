"""Sizes that Python computes from tensor shapes and module attributes, followed through the forward pass.

``x.reshape(B, N, C)`` with ``C = x.shape[-1]`` says that the reshaped dim *is* ``x``'s
channel dim, and ``C // num_heads`` that a head holds ``C / num_heads`` of those channels.
The aten operators only see plain numbers, so the tracer also watches the Python level
(a ``TorchFunctionMode``): reading ``x.shape`` or ``x.size()`` gives ints that remember the
dimension they measure (:class:`TracedSize`), floor division by a constant keeps that
memory, and a torch call that receives such ints leaves them for the op rules of the
aten operators it runs (:meth:`pruning_core.graph.OpCall.size_exprs`). A rule then relates
the output dim to the measured one instead of taking the number as written in code.

Module attributes that hold sizes are followed the same way while tracing: those a
layer handler names in ``size_attributes`` (``conv.in_channels``), and those a plugin
declares with a :class:`pruning_core.SizeAttribute` record (a split size, a head count).
After pruning, the core sets each declared attribute to the current size of what it was
found to measure.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .dims import STRUCTURED, DimError, Expr, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .trace import Recorder


class Source:
    """Where a traced Python int came from; resolves to a dimension expression of one trace."""

    def __init__(self, recorder: "Recorder") -> None:
        self.recorder = recorder

    def expr(self) -> Optional[Expr]:
        raise NotImplementedError


class DimSource(Source):
    """Dim ``dim`` of the traced tensor with serial ``serial``."""

    def __init__(self, recorder: "Recorder", serial: int, dim: int) -> None:
        super().__init__(recorder)
        self.serial, self.dim = serial, dim

    def expr(self) -> Optional[Expr]:
        return self.recorder.tensor_dims[self.serial][self.dim]


class QuotientSource(Source):
    """``base // divisor``: the inner factor when ``base`` is seen as ``divisor`` blocks (heads)."""

    def __init__(self, base: Source, divisor: int) -> None:
        super().__init__(base.recorder)
        self.base, self.divisor = base, divisor

    def expr(self) -> Optional[Expr]:
        base = self.base.expr()
        if base is None:
            return None
        space = self.recorder.space
        outer, inner = space.split_factor(base, self.divisor)
        space.mark(outer, STRUCTURED, f"count written in code (a size divided by {self.divisor})")
        return inner


class BindingSource(Source):
    """A size attribute of a module; what it measures is learned at its first use in a shape."""

    def __init__(self, recorder: "Recorder", binding: "SizeBinding") -> None:
        super().__init__(recorder)
        self.binding = binding

    def expr(self) -> Optional[Expr]:
        return self.binding.expr()


class SizeBinding:
    """``module.attribute`` measures ``expr``; after pruning the core writes the new size back.

    ``slot`` is ``(module, side)`` when a handler declared the attribute (its handler keeps it
    up to date); otherwise the first shape operation that uses the value defines ``expr``.
    """

    def __init__(self, recorder: "Recorder", module: nn.Module, attribute: str, value: int,
                 slot: Optional[Tuple[nn.Module, str]] = None, count: bool = False) -> None:
        self.recorder, self.module, self.attribute, self.value, self.slot = recorder, module, attribute, value, slot
        self.count = count  # a count of heads: bound and written back, but not unlocked for pruning
        self.bound: Optional[Expr] = None

    def expr(self) -> Optional[Expr]:
        if self.slot is not None:
            module, side = self.slot
            slots = self.recorder.slots_of_module(module)
            return None if slots is None else (slots[1] if side == "out" else slots[0]).expr
        return self.bound

    def bind(self, expr: Expr) -> None:
        if self.slot is None and self.bound is None:
            self.bound = expr

    @property
    def follows_pruning(self) -> bool:
        """Whether the core must write this attribute after pruning (its handler does not)."""
        return self.slot is None and self.bound is not None


class TracedSize(int):
    """An ``int`` that remembers which traced dimension it measures."""

    def __new__(cls, value: int, source: Source) -> "TracedSize":
        obj = int.__new__(cls, value)
        obj.source = source
        return obj

    def __floordiv__(self, other: Any) -> Any:
        plain = int(self) // other if not isinstance(other, int) else int(self) // int(other)
        if isinstance(other, int) and not isinstance(other, bool) and other > 1 and int(self) % int(other) == 0:
            return TracedSize(plain, QuotientSource(self.source, int(other)))
        return plain

    def __repr__(self) -> str:
        return int.__repr__(self)

    def __reduce__(self) -> Any:  # pickles and copies as the plain number
        return (int, (int(self),))


class TracedShape(tuple):
    """``x.shape`` while tracing: a tuple of :class:`TracedSize`, with ``torch.Size``'s ``numel``."""

    def numel(self) -> int:
        total = 1
        for size in self:
            total *= int(size)
        return total

    def __getitem__(self, item: Any) -> Any:
        value = tuple.__getitem__(self, item)
        return TracedShape(value) if isinstance(item, slice) else value


def _shape_getters() -> Tuple[Any, ...]:
    return (torch.Tensor.shape.__get__, torch.Tensor.size)


def _sizing_functions() -> frozenset:
    """Python-level calls whose int arguments the op rules relate to dims (others pass straight through)."""
    T = torch.Tensor
    found = [T.view, T.reshape, torch.reshape, T.expand, T.split, torch.split, T.split_with_sizes, T.unflatten,
             torch.unflatten, T.new_zeros, T.new_ones, T.new_empty, T.new_full, torch.zeros, torch.ones,
             torch.empty, torch.full]
    return frozenset(found)


def _ints_in(args: Sequence[Any], kwargs: Dict[str, Any]) -> List[Any]:
    """The ints among a call's arguments, in order, looking one level into lists and tuples."""
    found: List[Any] = []
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return found


class SizeTracker(TorchFunctionMode):
    """Hands out :class:`TracedSize` for shapes of traced tensors and passes them on to the op rules."""

    def __init__(self, recorder: "Recorder") -> None:
        super().__init__()
        self.recorder = recorder
        self.getters = _shape_getters()
        self.sizing = _sizing_functions()

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.recorder.handled_depth or self.recorder.in_hook:  # nothing recorded here: stay out of the way
            return func(*args, **kwargs)
        if func in self.getters:
            return self._traced_shape(func(*args, **kwargs), args)
        if func not in self.sizing:
            return func(*args, **kwargs)
        ints = _ints_in(args, kwargs)
        if not any(isinstance(i, TracedSize) for i in ints):
            return func(*args, **kwargs)
        hints = [(int(i), i.source if isinstance(i, TracedSize) and i.source.recorder is self.recorder else None)
                 for i in ints]
        self.recorder.size_hints.append(hints)
        try:
            return func(*args, **kwargs)
        finally:
            self.recorder.size_hints.pop()

    def _traced_shape(self, result: Any, args: Sequence[Any]) -> Any:
        tensor = args[0] if args else None
        serial = self.recorder.known_serial(tensor) if isinstance(tensor, torch.Tensor) else None
        if serial is None:
            return result
        if isinstance(result, int):  # x.size(dim)
            dim = args[1] if len(args) > 1 else None
            if not isinstance(dim, int) or result < 2:
                return result
            return TracedSize(result, DimSource(self.recorder, serial, dim % tensor.ndim))
        return TracedShape(TracedSize(size, DimSource(self.recorder, serial, d)) if size > 1 else size
                           for d, size in enumerate(result))


def aligned_sources(recorder: "Recorder", sizes: Sequence[int]) -> List[Optional[Source]]:
    """For each of ``sizes`` (an aten operator's size arguments), where Python got it from, if traced.

    The sizes are matched in order against the ints the enclosing Python call received.
    """
    if not recorder.size_hints:
        return [None] * len(sizes)
    hints = recorder.size_hints[-1]
    wanted = [int(s) for s in sizes]
    for start in range(len(hints) - len(wanted) + 1):
        window = hints[start:start + len(wanted)]
        if all(w == h or -1 in (w, h) for w, (h, _) in zip(wanted, window)):  # -1: inferred, not traced
            return [source if w != -1 else None for w, (_, source) in zip(wanted, window)]
    return [None] * len(sizes)


def follow(recorder: "Recorder", sizes: Sequence[int], produced: Sequence[Expr]) -> List[bool]:
    """Relate each produced dim to where its size came from; True where it was a traced size.

    A size measured from a traced dim is unified with that dim; a size attribute not yet
    bound learns that it measures the produced dim. Sizes that cannot be related stay
    as they were (as if written in code).
    """
    traced = []
    for source, expr in zip(aligned_sources(recorder, sizes), produced):
        if source is None:
            traced.append(False)
            continue
        if isinstance(source, BindingSource) and source.binding.expr() is None:
            source.binding.bind(resolve(expr))
            traced.append(not source.binding.count)
            continue
        try:
            known = source.expr()
            if known is None:
                traced.append(False)
                continue
            recorder.space.unify(expr, known)
        except DimError:
            traced.append(False)
            continue
        traced.append(True)
    return traced


@contextlib.contextmanager
def followed_attributes(recorder: "Recorder", model: nn.Module, handled: Dict[int, Any],
                        declared: Sequence[Tuple[nn.Module, str, bool]]) -> Iterator[None]:
    """While tracing, replace size attributes by :class:`TracedSize` values; put the plain ints back after."""
    replaced: List[Tuple[nn.Module, str, Any]] = []
    try:
        for module in model.modules():
            handler = handled.get(id(module))
            for attr, side in (getattr(handler, "size_attributes", None) or {}).items():
                value = module.__dict__.get(attr)
                if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                    binding = SizeBinding(recorder, module, attr, value, slot=(module, side))
                    replaced.append((module, attr, value))
                    module.__dict__[attr] = TracedSize(value, BindingSource(recorder, binding))
        for module, attr, count in declared:
            value = module.__dict__.get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                binding = SizeBinding(recorder, module, attr, value, count=count)
                recorder.size_bindings.append(binding)
                replaced.append((module, attr, value))
                module.__dict__[attr] = TracedSize(value, BindingSource(recorder, binding))
        yield
    finally:
        for module, attr, value in replaced:
            module.__dict__[attr] = value


def scrub(model: nn.Module) -> None:
    """Turn traced ints that the forward stored on modules (caches of a shape) back into plain ints."""
    for module in model.modules():
        for key, value in list(module.__dict__.items()):
            if isinstance(value, TracedSize):
                module.__dict__[key] = int(value)
            elif isinstance(value, TracedShape):
                module.__dict__[key] = tuple(int(v) for v in value)
