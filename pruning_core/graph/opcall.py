"""What an op rule sees: one aten call, its tensors, and the dimension algebra to relate them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence

import torch

from .dims import STRUCTURED, DimError, DimSpace, Expr

if TYPE_CHECKING:  # pragma: no cover
    from .trace import Recorder


def iter_tensors(obj: Any, _depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside ``obj``: tensors, sequences, mappings (``ModelOutput``) and dataclasses."""
    if _depth > 8:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_tensors(item, _depth + 1)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item, _depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, field.name, None), _depth + 1)


def is_pointwise(func: Any) -> bool:
    """Tagged pointwise, or the in-place form (``relu_``) of a tagged pointwise operator."""
    if torch.Tag.pointwise in func.tags:
        return True
    name = func._schema.name
    if name.endswith("_") and torch.Tag.inplace in func.tags:
        packet = getattr(torch.ops.aten, name.split("::", 1)[1][:-1], None)
        overload = getattr(packet, func._overloadname, None) if packet is not None else None
        return overload is not None and torch.Tag.pointwise in overload.tags
    return False


class OpCall:
    """What an op rule sees: one aten call, its tensors and the dimension algebra.

    Rules read inputs with :meth:`dims`, relate them with :meth:`unify`, and
    must give every tensor output its dimensions with :meth:`set`.
    """

    __slots__ = ("func", "args", "kwargs", "outputs", "recorder", "_named")

    def __init__(self, func: Any, args: tuple, kwargs: dict, outputs: List[torch.Tensor], recorder: "Recorder") -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.outputs = outputs
        self.recorder = recorder
        self._named: Optional[Dict[str, Any]] = None

    @property
    def name(self) -> str:
        return self.func._schema.name

    @property
    def space(self) -> DimSpace:
        return self.recorder.space

    def arg(self, name: str, default: Any = None) -> Any:
        """An argument by its schema name (positional or keyword)."""
        if self._named is None:
            named: Dict[str, Any] = {}
            for index, spec in enumerate(self.func._schema.arguments):
                if index < len(self.args):
                    named[spec.name] = self.args[index]
                elif spec.name in self.kwargs:
                    named[spec.name] = self.kwargs[spec.name]
            self._named = named
        value = self._named.get(name, default)
        return default if value is None else value

    def dims(self, tensor: torch.Tensor) -> List[Expr]:
        return list(self.recorder.dims_of(tensor))

    def set(self, tensor: torch.Tensor, dims: Sequence[Expr]) -> None:
        self.recorder.set_dims(tensor, list(dims))

    def unify(self, a: Expr, b: Expr) -> None:
        self.recorder.space.unify(a, b)

    def new(self, size: int, flags: int = STRUCTURED, note: Optional[str] = None) -> Expr:
        return self.recorder.space.atom(size, flags, note or f"size set by {self.name}")

    def freeze(self, expr: Expr, note: Optional[str] = None) -> None:
        self.recorder.space.freeze(expr, note or f"indexed by {self.name}")

    def follow_sizes(self, sizes: Sequence[int], produced: Sequence[Expr]) -> List[bool]:
        """Relate produced dims to the Python sizes they were given with: ``produced[i]`` got size ``sizes[i]``.

        Where that size was read from a traced tensor's shape (``C = x.shape[-1]``, ``C // heads``)
        or from a followed size attribute, the produced dim is unified with what it measures.
        Returns, per size, whether it was followed: rules should not mark those dims as sized in
        code (their size follows pruning).
        """
        from .symbolic import follow

        return follow(self.recorder, sizes, produced)

    def traced_sizes(self, sizes: Sequence[int]) -> List[bool]:
        """Whether Python computed each of ``sizes`` from a traced shape or a followed size attribute.

        Such sizes follow pruning when the forward runs again; constants do not. Each traced size
        is resolved for its effect: ``qkv_bias[n // 3 : 2 * (n // 3)]`` cuts the dim into three
        parts first, so slicing it at those offsets lands on their boundaries.
        """
        from .symbolic import aligned_sources

        traced = []
        for source in aligned_sources(self.recorder, sizes):
            if source is not None:
                try:
                    source.expr()
                except DimError:  # the dim cannot take that structure; the size still follows pruning
                    pass
            traced.append(source is not None)
        return traced

    def written_sizes(self, sizes: Sequence[int]) -> List[bool]:
        """Whether the model's Python code passed each of ``sizes`` as a plain number (``split(x, 8)``).

        False for sizes read from shapes and for sizes aten worked out itself (``chunk`` reaches the
        rules as a split at a computed size).
        """
        from .symbolic import written_sizes

        return written_sizes(self.recorder, sizes)

    def bind_stored_sizes(self, weight: Any, sizes: Sequence[int], exprs: Sequence[Expr]) -> None:
        """Sizes the model's code keeps as a list attribute of ``weight``'s module (a hand-written
        LayerNorm's ``normalized_shape``) are written back after pruning: ``sizes[i]`` measures ``exprs[i]``."""
        from .symbolic import bind_stored_sizes

        bind_stored_sizes(self.recorder, weight, sizes, exprs)

    def structure(self, expr: Expr, note: Optional[str] = None) -> None:
        self.recorder.space.mark(expr, STRUCTURED, note or f"sized in code at {self.name}")
