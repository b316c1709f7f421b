"""Traced ints: Python sizes that remember which traced dimension they measure (see ``symbolic.py``).

A :class:`TracedSize` is an ``int`` with a :class:`Source`: a dim of a traced tensor, a quotient
(``C // heads``), a product (``h * C``), a difference (``dim - pdim``) or a module attribute
(:class:`SizeBinding`). Arithmetic on them keeps the source where the result is still a size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

from torch import nn

from .dims import STRUCTURED, Expr, Prod, current_size, resolve

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


class ProductSource(Source):
    """``a * b`` of traced sizes (``num_heads * C``), or ``k * a``: a multiple is an offset, not a dim."""

    def __init__(self, factors: Sequence[Source], multiple: int = 1) -> None:
        super().__init__(factors[0].recorder)
        self.factors, self.multiple = list(factors), multiple

    def expr(self) -> Optional[Expr]:
        exprs = [factor.expr() for factor in self.factors]  # evaluated for their effect (heads cut out)
        if self.multiple != 1 or any(e is None for e in exprs):
            return None
        return resolve(Prod(tuple(exprs))) if len(exprs) > 1 else exprs[0]


class DifferenceSource(Source):
    """``whole - part`` (SHViT's ``self.dim - self.pdim``): the rest of ``whole`` once ``part`` is cut off."""

    def __init__(self, whole: Source, part: Source) -> None:
        super().__init__(whole.recorder)
        self.whole, self.part = whole, part

    def expr(self) -> Optional[Expr]:
        return None  # what the rest is becomes known where it is split off (``follow``)


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
                 slot: Optional[Tuple[nn.Module, str]] = None, count: bool = False,
                 index: Optional[int] = None) -> None:
        self.recorder, self.module, self.attribute, self.value, self.slot = recorder, module, attribute, value, slot
        self.count = count  # a count of heads: bound and written back, but not unlocked for pruning
        self.index = index  # the position in a list or tuple attribute (split sizes), or None for an int
        self.bound: Optional[Expr] = None
        self.scale = 1  # ``in_channels // paths`` sized a part: the attribute is ``scale`` times ``bound``
        # never used in a shape: the dims of the module's own weights of that size; followed while they agree
        self.weights: Tuple[Expr, ...] = ()

    def expr(self) -> Optional[Expr]:
        if self.slot is not None:
            module, side = self.slot
            slots = self.recorder.slots_of_module(module)
            return None if slots is None else (slots[1] if side == "out" else slots[0]).expr
        return self.bound if self.scale == 1 else None

    @property
    def unbound(self) -> bool:
        return self.slot is None and self.bound is None

    def bind(self, expr: Expr, scale: int = 1) -> None:
        if self.unbound:
            self.bound, self.scale = expr, scale

    @property
    def follows_pruning(self) -> bool:
        """Whether the core must write this attribute after pruning (its handler does not)."""
        return self.slot is None and (self.bound is not None or bool(self.weights))

    def current_value(self) -> Optional[int]:
        """The size to write back now; None when the weights it matched no longer agree on one size."""
        if self.bound is not None:
            return current_size(resolve(self.bound)) * self.scale  # the atom may have been split since
        sizes = {current_size(resolve(expr)) for expr in self.weights}
        return sizes.pop() if len(sizes) == 1 else None


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

    def __mul__(self, other: Any) -> Any:
        plain = int.__mul__(self, other)
        if isinstance(other, TracedSize) and other.source.recorder is self.source.recorder:
            return TracedSize(plain, ProductSource([self.source, other.source]))
        if isinstance(other, int) and not isinstance(other, bool) and other > 1:
            return TracedSize(plain, ProductSource([self.source], int(other)))
        return plain

    __rmul__ = __mul__

    def __sub__(self, other: Any) -> Any:
        plain = int.__sub__(self, other)
        if isinstance(other, TracedSize) and other.source.recorder is self.source.recorder and plain > 1:
            return TracedSize(plain, DifferenceSource(self.source, other.source))
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
