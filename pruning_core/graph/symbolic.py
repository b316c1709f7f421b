"""Sizes that Python computes from tensor shapes and module attributes, followed through the forward pass.

``x.reshape(B, N, C)`` with ``C = x.shape[-1]`` says that the reshaped dim *is* ``x``'s
channel dim, and ``C // num_heads`` that a head holds ``C / num_heads`` of those channels.
The aten operators only see plain numbers, so the tracer also watches the Python level
(``Tensor.shape``, ``Tensor.size`` and the calls that take sizes, wrapped while tracing):
reading ``x.shape`` or ``x.size()`` gives ints that remember the dimension they measure
(:class:`TracedSize`), floor division by a constant keeps that
memory, and a torch call that receives such ints leaves them for the op rules of the
aten operators it runs (``OpCall.follow_sizes`` in the rules). A rule then relates
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

from .dims import Cat, DimError, Expr, leaves, resolve
from .sizes import (BindingSource, DifferenceSource, DimSource, QuotientSource, SizeBinding,  # noqa: F401
                    Source, TracedShape, TracedSize)

if TYPE_CHECKING:  # pragma: no cover
    from .trace import Recorder


_TENSOR_SIZING = ("view", "reshape", "expand", "split", "split_with_sizes", "new_zeros", "new_ones",
                  "new_empty", "new_full", "__getitem__")
_TORCH_SIZING = ("reshape", "split", "zeros", "ones", "empty", "full")
# calls whose plain numbers are told apart from sizes aten worked out (``chunk`` reaches aten as a split)
_WRITTEN_SIZES_MATTER = ("split",)


class SizeTracker:
    """While active, hands out :class:`TracedSize` for shapes of traced tensors and passes them to the op rules.

    Only ``Tensor.shape``, ``Tensor.size`` and the calls that take sizes (``view``, ``reshape``,
    ``expand``, ``split``, new tensors...) are wrapped, for the time of one trace, so the other
    operators of the forward cost nothing extra.
    """

    def __init__(self, recorder: "Recorder", model: Optional[nn.Module] = None) -> None:
        self.recorder = recorder
        self.model = model
        self._modules: Optional[Dict[str, nn.Module]] = None
        self._saved: List[Tuple[Any, str, Any]] = []

    def _quiet(self) -> bool:
        return bool(self.recorder.handled_depth or self.recorder.in_hook)  # nothing recorded there

    def __enter__(self) -> "SizeTracker":
        base_shape = torch._C.TensorBase.shape.__get__
        base_size = torch._C.TensorBase.size
        base_numel = torch._C.TensorBase.numel
        tracker = self

        def shape(tensor: torch.Tensor) -> Any:
            result = base_shape(tensor)
            return result if tracker._quiet() else tracker._traced_shape(result, tensor, None)

        def numel(tensor: torch.Tensor) -> Any:  # ``bias.numel() // 3`` (Swin V2): a 1-d tensor's length
            result = base_numel(tensor)
            if tracker._quiet() or result < 2 or sum(1 for n in base_shape(tensor) if n > 1) != 1:
                return result
            return tracker._traced_shape(result, tensor, [n > 1 for n in base_shape(tensor)].index(True))

        def size(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            result = base_size(tensor, *args, **kwargs)
            if tracker._quiet():
                return result
            dim = args[0] if args else kwargs.get("dim")
            return tracker._traced_shape(result, tensor, dim)

        self._patch(torch.Tensor, "shape", property(shape))
        self._patch(torch.Tensor, "size", size)
        self._patch(torch.Tensor, "numel", numel)
        # ``expand_as(other)`` (F.normalize's denominator): other's sizes, as measured, not as written in code.
        self._patch(torch.Tensor, "expand_as", lambda tensor, other: tensor.expand(other.shape))
        for owner, names in ((torch.Tensor, _TENSOR_SIZING), (torch, _TORCH_SIZING)):
            for name in names:
                original = getattr(owner, name, None)
                if callable(original):
                    self._patch(owner, name, self._sizing(original, always=name in _WRITTEN_SIZES_MATTER))
        for owner in (torch.Tensor, torch):
            self._patch(owner, "unflatten", self._unflatten(owner.unflatten))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, value)

    def _sizing(self, func: Any, always: bool = False) -> Any:
        tracker = self

        def call(*args: Any, **kwargs: Any) -> Any:
            if tracker._quiet():
                return func(*args, **kwargs)
            if always and len(args) > 1 and type(args[1]) is int:  # split(x, self.n_embd): a plain attribute?
                args = (args[0], tracker._stored_size(args[0], args[1])) + args[2:]
            ints = _ints_in(args, kwargs)
            if not always and not any(isinstance(i, TracedSize) for i in ints):
                return func(*args, **kwargs)
            recorder = tracker.recorder
            hints = [(int(i), i.source if isinstance(i, TracedSize) and i.source.recorder is recorder else None)
                     for i in ints]
            recorder.size_hints.append(hints)
            try:
                return func(*args, **kwargs)
            finally:
                recorder.size_hints.pop()

        return call

    def _stored_size(self, tensor: Any, size: int) -> int:
        """``split(self.n_embd, dim=2)`` passes a plain number, which would keep the channels it counts; when
        exactly one int attribute of the running module holds it, it is followed like a declared ``SizeAttribute``."""
        if self.model is None or size < 2 or not isinstance(tensor, torch.Tensor) \
                or self.recorder.known_serial(tensor) is None:
            return size
        if self._modules is None:
            self._modules = dict(self.model.named_modules())
        module = self._modules.get(self.recorder.current_scope)
        names = _attributes_holding(module, size) if module is not None else []
        if len(names) != 1:
            return size
        for binding in self.recorder.size_bindings:  # one binding per attribute: every split it sizes agrees
            if binding.module is module and binding.attribute == names[0]:
                return TracedSize(size, BindingSource(self.recorder, binding))
        return _traced(self.recorder, module, names[0], size, False, None)

    def _unflatten(self, func: Any) -> Any:
        """``x.unflatten(d, (h, -1))`` as the ``view`` it is, with ``x``'s other dims as measured.

        The aten operator only sees the sizes after ``-1`` was worked out, so without this a ``-1``
        looked like a size written in code, where in a ``view`` it follows pruning.
        """
        tracker = self

        def call(*args: Any, **kwargs: Any) -> Any:
            named = dict(zip(("input", "dim", "sizes"), args), **kwargs)
            tensor, dim, sizes = named.get("input", named.get("self")), named.get("dim"), named.get("sizes")
            if len(named) != 3 or tracker._quiet() or not isinstance(tensor, torch.Tensor) \
                    or not isinstance(dim, int) or not isinstance(sizes, (list, tuple)) \
                    or not all(isinstance(size, int) for size in sizes) \
                    or tracker.recorder.known_serial(tensor) is None or not -tensor.ndim <= dim < tensor.ndim:
                return func(*args, **kwargs)  # named dims, an untraced tensor: as it was
            shape = tensor.shape  # the patched property: measured sizes
            dim %= tensor.ndim
            return tensor.view(*shape[:dim], *sizes, *shape[dim + 1:])

        return call

    def _traced_shape(self, result: Any, tensor: torch.Tensor, dim: Any) -> Any:
        serial = self.recorder.known_serial(tensor)
        if serial is None:
            return result
        if isinstance(result, int):  # x.size(dim)
            if not isinstance(dim, int) or result < 2:
                return result
            return TracedSize(result, DimSource(self.recorder, serial, dim % tensor.ndim))
        return TracedShape(TracedSize(size, DimSource(self.recorder, serial, d)) if size > 1 else size
                           for d, size in enumerate(result))


_ABSENT = object()


def _ints_in(args: Sequence[Any], kwargs: Dict[str, Any]) -> List[Any]:
    """The ints among a call's arguments, in order, looking one level into lists, tuples and slices."""
    found: List[Any] = []
    for value in list(args) + list(kwargs.values()):
        for item in (value if isinstance(value, (list, tuple)) else (value,)):
            for v in ((item.start, item.stop, item.step) if isinstance(item, slice) else (item,)):  # x[a:b]
                if isinstance(v, int) and not isinstance(v, bool):
                    found.append(v)
    return found


def aligned_sources(recorder: "Recorder", sizes: Sequence[int]) -> List[Optional[Source]]:
    """For each of ``sizes`` (an aten operator's size arguments), where Python got it from, if traced.

    The sizes are matched in order against the ints the enclosing Python call received.
    """
    window = _window(recorder, sizes)
    if window is None:
        return [None] * len(sizes)
    return [source if int(w) != -1 else None for w, (_, source) in zip(sizes, window)]


def written_sizes(recorder: "Recorder", sizes: Sequence[int]) -> List[bool]:
    """For each of ``sizes``, whether the enclosing Python call was given it as a plain number.

    False where Python read it from a shape, where it is ``-1``, and where no Python call
    that records its sizes is under way (aten worked the size out: ``chunk``).
    """
    window = _window(recorder, sizes)
    if window is None:
        return [False] * len(sizes)
    return [source is None and h != -1 for h, source in window]


def _window(recorder: "Recorder", sizes: Sequence[int]) -> Optional[List[Tuple[int, Any]]]:
    """The run of the enclosing Python call's ints that matches ``sizes`` in order (``-1`` matches any)."""
    if not recorder.size_hints:
        return None
    hints = recorder.size_hints[-1]
    wanted = [int(s) for s in sizes]
    for start in range(len(hints) - len(wanted) + 1):
        window = hints[start:start + len(wanted)]
        if all(w == h or -1 in (w, h) for w, (h, _) in zip(wanted, window)):  # -1: inferred, not traced
            return window
    return None


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
        if isinstance(source, BindingSource) and source.binding.unbound:
            source.binding.bind(resolve(expr))
            traced.append(not source.binding.count)
            continue
        if isinstance(source, DifferenceSource):  # split(x, [self.pdim, self.dim - self.pdim]): the rest
            traced.append(_follow_rest(recorder, source, expr))
            continue
        base = source.base if isinstance(source, QuotientSource) else None
        if isinstance(base, BindingSource) and base.binding.unbound and not base.binding.count:
            base.binding.bind(resolve(expr), scale=source.divisor)  # ``self.in_channels // self.num_paths``
            traced.append(True)
            continue
        try:
            known = source.expr()
            if known is None:
                traced.append(False)
                continue
            if not _related(expr, known):
                recorder.space.unify(expr, known)
        except DimError:
            traced.append(False)
            continue
        traced.append(True)
    return traced


def _related(produced: Expr, measured: Expr) -> bool:
    """Whether ``produced`` is already made of what ``measured`` is made of, so the size needs no tie.

    A channel shuffle (``view(B, g, C // g, H, W)``, a transpose, then ``view(B, C, H, W)``) measures
    ``C`` before the shuffle and produces the same channels in another order: the same size, not the
    same positions, so tying the two dims would pair channels the shuffle moved.
    """
    ids = {id(atom) for atom in leaves(resolve(measured)) if atom.size > 1}
    return any(id(atom) in ids for atom in leaves(resolve(produced)) if atom.size > 1)


def _follow_rest(recorder: "Recorder", source: DifferenceSource, rest: Expr) -> bool:
    """``whole - part`` sized ``rest``: ``whole`` is ``part`` then ``rest`` (bound, when an unbound attribute)."""
    part = source.part.expr()
    if part is None:
        return False
    whole = source.whole.binding if isinstance(source.whole, BindingSource) else None
    if whole is not None and whole.unbound:
        if whole.count:
            return False
        whole.bind(resolve(Cat((part, rest))))
        return True
    known = source.whole.expr()
    try:
        if known is None:
            return False
        recorder.space.unify(known, Cat((part, rest)))  # RAFT: context_out.shape[1] - hidden_state_size
    except DimError:
        return False
    return True


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
            if isinstance(value, TracedSize):  # a handler follows it already
                continue
            if isinstance(value, (list, tuple)):  # split sizes: each size is followed on its own
                replaced.append((module, attr, value))
                module.__dict__[attr] = type(value)(_traced(recorder, module, attr, v, count, i)
                                                    for i, v in enumerate(value))
            elif isinstance(value, int):
                replaced.append((module, attr, value))
                module.__dict__[attr] = _traced(recorder, module, attr, value, count, None)
        yield
    finally:
        for module, attr, value in replaced:
            module.__dict__[attr] = value


def bind_to_weights(recorder: "Recorder") -> None:
    """Declared sizes the forward never shaped anything with follow the dims of their module's own weights
    of the same size (a fused experts block's ``intermediate_dim``), so they do not go stale after pruning."""
    waiting = [b for b in recorder.size_bindings if b.unbound and not b.count and b.index is None]
    if not waiting:
        return
    weight_dims: Dict[int, List[Expr]] = {}
    for slot in recorder.slots:
        if slot.kind in ("param", "buffer"):
            weight_dims.setdefault(id(slot.target.owner), []).append(slot.expr)
    for binding in waiting:
        binding.weights = tuple(e for e in weight_dims.get(id(binding.module), ()) if e.size == binding.value)


def bind_stored_sizes(recorder: "Recorder", weight: Any, sizes: Sequence[int], exprs: Sequence[Expr]) -> None:
    """A list or tuple attribute of ``weight``'s module that holds exactly ``sizes`` measures ``exprs``.

    ``F.layer_norm(x, self.normalized_shape, self.weight, self.bias)`` in a LayerNorm written by
    hand: aten sees plain numbers, but the module keeps them, so the core writes them back after
    pruning as it does for a declared :class:`pruning_core.SizeAttribute`.
    """
    entry = recorder.param_owner.get(id(weight)) if isinstance(weight, torch.Tensor) else None
    if entry is None:
        return
    module, wanted = entry[1], [int(size) for size in sizes]
    for attr in _attributes_holding(module, wanted):
        if any(b.module is module and b.attribute == attr for b in recorder.size_bindings):
            continue  # declared by a plugin, or bound on an earlier call
        for index, (size, expr) in enumerate(zip(wanted, exprs)):
            if size > 1:
                binding = SizeBinding(recorder, module, attr, size, index=index)
                binding.bind(resolve(expr))
                recorder.size_bindings.append(binding)


def _attributes_holding(module: nn.Module, value: Any) -> List[str]:
    """Names of ``module``'s public attributes that hold exactly ``value``: an int, or a list of ints (as list or tuple)."""
    def holds(held: Any) -> bool:
        if isinstance(value, int):
            return type(held) is int and held == value
        return isinstance(held, (list, tuple)) and all(type(v) in (int, TracedSize) for v in held) \
            and [int(v) for v in held] == value

    return [name for name, held in vars(module).items() if not name.startswith("_") and holds(held)]


def _traced(recorder: "Recorder", module: nn.Module, attr: str, value: Any, count: bool,
            index: Optional[int]) -> Any:
    """A declared size as a :class:`TracedSize` bound to a new :class:`SizeBinding` (sizes below 2 stay as they are)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        return value
    binding = SizeBinding(recorder, module, attr, value, count=count, index=index)
    recorder.size_bindings.append(binding)
    return TracedSize(value, BindingSource(recorder, binding))


def scrub(model: nn.Module) -> None:
    """Turn traced ints that the forward stored on modules (caches of a shape) back into plain ints."""
    for module in model.modules():
        for key, value in list(module.__dict__.items()):
            if isinstance(value, TracedSize):
                module.__dict__[key] = int(value)
            elif isinstance(value, TracedShape):
                module.__dict__[key] = tuple(int(v) for v in value)
