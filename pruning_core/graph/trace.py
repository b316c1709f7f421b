"""Tracing: run the model once and record how every tensor dimension relates to channels.

The tracer is a ``TorchDispatchMode``: it sees each aten operator the forward
pass runs, with real (or ``meta``) tensors, so it needs no autograd, works under
``torch.no_grad()``, with frozen parameters and on the meta device. Modules that
have a layer handler are recorded as one call (their inner operators are
skipped); everything else is recorded operator by operator, and each operator's
rule unifies the dimension expressions of its inputs and outputs. Running the
forward under the tracer is in :mod:`pruning_core.graph.capture`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import GraphError, warn
from . import handlers as hv
from .dims import OUTPUT, STRUCTURED, Cat, DataDependentDimError, DimError, DimSpace, Expr, Prod, leaves, resolve
from .opcall import OpCall, is_pointwise, iter_tensors
from .slots import Slot, Target


@dataclasses.dataclass
class Node:
    """One step of the trace: a model input, an operator, a handled module call or a parameter."""

    kind: str
    label: str
    inputs: List[int]
    outputs: List[int]
    scope: str = ""
    slots: Tuple[Slot, ...] = ()


@dataclasses.dataclass
class UnsupportedOp:
    """An operator without a rule, or whose rule failed: its dimensions were frozen."""

    op: str
    scope: str
    reason: str


_DATA_DEPENDENT_OPS = {"nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2",
                       "unique_consecutive", "unique_dim", "nms", "argwhere"}


def _op_base_name(op_name: str) -> str:
    """``aten.nonzero.default`` and ``torchvision.nms.default`` give ``nonzero`` and ``nms``."""
    parts = op_name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


class Recorder:
    """Holds the dimension algebra, the tensor table, slots and nodes while tracing."""

    def __init__(self, model: torch.nn.Module, resolve_handler: Callable[[torch.nn.Module], Any],
                 rule_lookup: Callable[[Any], Optional[Callable[[OpCall], None]]],
                 pointwise_rule: Callable[[OpCall], None]) -> None:
        self.space = DimSpace()
        self._table: Dict[int, Tuple[Any, int]] = {}
        self.tensor_dims: List[List[Expr]] = []
        self.nodes: List[Node] = []
        self.slots: List[Slot] = []
        self.unsupported: List[UnsupportedOp] = []
        self.scope: List[str] = []
        self.handled_depth = 0
        self._rule_lookup = rule_lookup
        self._pointwise_rule = pointwise_rule
        self._resolve_handler = resolve_handler
        self._tensor_handlers: Dict[type, Any] = {}
        self._pinned: List[torch.Tensor] = []
        self.module_names: Dict[int, str] = {}
        self.handlers: Dict[int, Any] = {}
        self.module_slots: Dict[int, Tuple[Slot, Slot]] = {}
        self.cover_owner: Dict[int, torch.nn.Module] = {}
        self.unhandled: Dict[int, Tuple[torch.nn.Module, Any]] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(module), name)
        for name, module in model.named_modules():
            if id(module) in self.cover_owner:
                continue
            handler = resolve_handler(module)
            if handler is not None:
                self.handlers[id(module)] = handler
                for inner in module.modules():
                    self.cover_owner[id(inner)] = module
        self.param_owner: Dict[int, Tuple[str, torch.nn.Module, str, bool]] = {}
        for name, module in model.named_modules():
            for attr, param in module.named_parameters(recurse=False):
                self.param_owner.setdefault(id(param), (name, module, attr, False))
            for attr, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    self.param_owner.setdefault(id(buf), (name, module, attr, True))
        self.param_slots: Dict[int, List[Slot]] = {}
        self.output_shapes: List[Tuple[int, ...]] = []
        # Output dims whose size depends on data (detections after NMS): pruning may change them.
        self.output_dynamic: List[Tuple[bool, ...]] = []
        self.dynamic_atoms: set = set()
        self.data_tainted: set = set()  # serials of tensors computed from data-dependent ones
        self.error_scope: Optional[str] = None
        # Python-level sizes (symbolic.py): ints each enclosing torch call received; followed attributes.
        self.size_hints: List[List[Tuple[int, Any]]] = []
        self.in_hook = False  # the tracer's own module hooks are running (their shape reads are not the model's)
        self.size_bindings: List[Any] = []

    # -- tensor table -----------------------------------------------------------
    def _serial(self, tensor: torch.Tensor) -> Optional[int]:
        entry = self._table.get(id(tensor))
        if entry is None:
            return None
        ref, serial = entry
        return serial if ref() is tensor else None

    def known_serial(self, tensor: torch.Tensor) -> Optional[int]:
        """The serial of a tensor the trace has already seen, or None (never adopts a new one)."""
        return self._serial(tensor)

    def slots_of_module(self, module: torch.nn.Module) -> Optional[Tuple[Slot, Slot]]:
        """A handled module's (in, out) slots, created from its handler's sizes if it has not run yet."""
        found = self.module_slots.get(id(module))
        if found is None and id(module) in self.handlers:
            qualname = self.module_names.get(id(module), type(module).__name__)
            found = self._slots_for(module, qualname, self.handlers[id(module)], [], [])
        return found

    def dims_of(self, tensor: torch.Tensor) -> List[Expr]:
        serial = self._serial(tensor)
        if serial is None:
            serial = self._adopt(tensor)
        return self.tensor_dims[serial]

    def serial_of(self, tensor: torch.Tensor) -> int:
        serial = self._serial(tensor)
        return self._adopt(tensor) if serial is None else serial

    def set_dims(self, tensor: torch.Tensor, dims: List[Expr]) -> int:
        if len(dims) != tensor.ndim:
            raise DimError(f"rule gave {len(dims)} dims for a {tensor.ndim}-d tensor")
        serial = self._serial(tensor)
        if serial is not None and len(self.tensor_dims[serial]) == len(dims):
            # In-place result or a module returning its input: same tensor, same dims.
            for old, new in zip(self.tensor_dims[serial], dims):
                self.space.unify(old, new)
            return serial
        serial = len(self.tensor_dims)
        self.tensor_dims.append(dims)
        try:
            ref: Any = weakref.ref(tensor)
        except TypeError:
            self._pinned.append(tensor)
            ref = lambda: tensor  # noqa: E731 - tensors without weakref support stay pinned
        self._table[id(tensor)] = (ref, serial)
        return serial

    def _adopt(self, tensor: torch.Tensor) -> int:
        """First sight of a tensor no operator produced: a parameter, a buffer or a constant."""
        owner = self.param_owner.get(id(tensor))
        if owner is not None and id(owner[1]) in self.cover_owner:
            self._maybe_unhandle(self.cover_owner[id(owner[1])])
        if owner is not None and id(owner[1]) not in self.cover_owner:
            qualname, module, attr, is_buffer = owner
            dims: List[Expr] = []
            slots: List[Slot] = []
            if type(tensor) not in self._tensor_handlers:  # shown as dep.handler (prune_parameter_*)
                self._tensor_handlers[type(tensor)] = self._resolve_handler(tensor)
            for d, size in enumerate(tensor.shape):
                expr = self.space.atom(size, 0)
                dims.append(expr)
                if size > 1:
                    slot = Slot("buffer" if is_buffer else "param", Target(module, qualname, attr),
                                self._tensor_handlers[type(tensor)], expr, dim=d, serial=len(self.slots))
                    slot.linked = True
                    self.slots.append(slot)
                    slots.append(slot)
            serial = self.set_dims(tensor, dims)
            self.param_slots[id(tensor)] = slots
            self.nodes.append(Node("param", f"{qualname}.{attr}" if qualname else attr, [], [serial],
                                   self.current_scope, tuple(slots)))
            return serial
        if owner is not None:
            note = f"{owner[0]}.{owner[2]} is used outside the layer that owns it"
        else:
            note = "constant tensor created outside the traced forward"
        return self.set_dims(tensor, [self.space.frozen(size, note) for size in tensor.shape])

    def _maybe_unhandle(self, module: torch.nn.Module) -> None:
        """A handled layer whose weights are used directly (``F.linear(x, self.qkv.weight)``) before
        it is ever called is traced through its weights instead."""
        if self.handled_depth or id(module) in self.module_slots or id(module) not in self.handlers:
            return
        self.unhandled[id(module)] = (module, self.handlers.pop(id(module)))
        for inner in module.modules():
            self.cover_owner.pop(id(inner), None)

    def register_input(self, tensor: torch.Tensor, label: str) -> None:
        dims = [self.space.frozen(size, "model input") for size in tensor.shape]
        serial = self.set_dims(tensor, dims)
        self.nodes.append(Node("input", label, [], [serial]))

    def freeze_outputs(self, outputs: Any) -> None:
        serials = []
        self.output_shapes = [tuple(t.shape) for t in iter_tensors(outputs)]
        self.output_dynamic = [tuple(self._is_dynamic(e) for e in self.dims_of(t)) if self._serial(t) is not None
                               else (False,) * t.ndim for t in iter_tensors(outputs)]
        for tensor in iter_tensors(outputs):
            serial = self._serial(tensor)
            if serial is None:
                continue
            serials.append(serial)
            for expr in self.tensor_dims[serial]:
                self.space.mark(expr, OUTPUT, "model output")
        self.nodes.append(Node("output", "output", serials, []))

    @property
    def current_scope(self) -> str:
        return self.scope[-1] if self.scope else ""

    # -- operators ------------------------------------------------------------------
    def record_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outputs = list(iter_tensors(out))
        if not outputs:
            return
        inputs = [t for t in iter_tensors(args)] + [t for t in iter_tensors(list(kwargs.values()))]
        in_serials = [self.serial_of(t) for t in inputs]
        call = OpCall(func, args, kwargs, outputs, self)
        rule = self._rule_lookup(func)
        if rule is None and is_pointwise(func):
            rule = self._pointwise_rule
        op_name = str(func)
        data_dependent = False
        dynamic_before: List[Tuple[torch.Tensor, List[bool]]] = []
        known_before: set = set()
        tainted = False
        if self.dynamic_atoms:  # only models with data-dependent sizes pay for this
            for tensor in inputs:
                if self._serial(tensor) is not None:
                    dims = self.dims_of(tensor)
                    known_before.update(a for e in dims for a in leaves(e))
                    dynamic_before.append((tensor, [self._is_dynamic(e) for e in dims]))
            tainted = any(serial in self.data_tainted for serial in in_serials) or \
                any(any(flags) for _, flags in dynamic_before)
        if rule is None:
            self._give_up(call, inputs, outputs, op_name, "no rule for this operator")
        else:
            try:
                rule(call)
            except DimError as exc:
                data_dependent = isinstance(exc, DataDependentDimError)
                self._give_up(call, inputs, outputs, op_name, f"shapes could not be related ({exc})")
        out_serials = []
        for tensor in outputs:
            if self._serial(tensor) is None:
                self.set_dims(tensor, [self.space.frozen(s, f"output of {op_name}") for s in tensor.shape])
            out_serials.append(self._serial(tensor))
        # Sizes chosen by data (nonzero, NMS...) stay data-dependent through later ops: a size an op
        # derives from a tensor with a data-dependent dim (a slice of it, a top-k) is data-dependent too.
        if data_dependent or _op_base_name(op_name) in _DATA_DEPENDENT_OPS:
            self.data_tainted.update(out_serials)
            for tensor in outputs:
                for expr in self.dims_of(tensor):
                    self.dynamic_atoms.update(leaves(expr))
        elif tainted:
            self.data_tainted.update(out_serials)
            for tensor in outputs:  # an in-place write into a view (im_mask[y0:y1] = mask) taints its base
                base = getattr(tensor, "_base", None)
                if base is not None and self._serial(base) is not None:
                    self.data_tainted.add(self._serial(base))
            for tensor, flags in dynamic_before:  # a rule may have split a data-dependent dim: keep its parts
                for expr, flag in zip(self.dims_of(tensor), flags):
                    if flag:
                        self.dynamic_atoms.update(leaves(expr))
            if op_name.startswith("aten.stack") and len(outputs) == 1 and outputs[0].ndim:
                # How many results a Python loop stacked is up to the data (one mask per detection).
                dim = call.arg("dim", 0) % outputs[0].ndim
                dims = self.tensor_dims[out_serials[0]]
                dims[dim] = self.space.frozen(outputs[0].shape[dim], "stacked data-dependent results")
                self.dynamic_atoms.update(leaves(dims[dim]))
            # Sizes new here come from data-dependent tensors (a slice, a stack of per-detection results).
            for tensor in outputs:
                for expr in self.dims_of(tensor):
                    self.dynamic_atoms.update(a for a in leaves(expr) if a not in known_before)
        self.nodes.append(Node("op", op_name, in_serials, out_serials, self.current_scope))

    def _is_dynamic(self, expr: Expr) -> bool:
        return bool(self.dynamic_atoms) and any(atom in self.dynamic_atoms for atom in leaves(expr))

    def _give_up(self, call: OpCall, inputs: List[torch.Tensor], outputs: List[torch.Tensor], op_name: str,
                 reason: str) -> None:
        note = f"{op_name} in {self.current_scope or 'the model'}: {reason}"
        for tensor in inputs:
            for expr in self.dims_of(tensor):
                self.space.freeze(expr, note)
        for tensor in outputs:
            if self._serial(tensor) is None:
                self.set_dims(tensor, [self.space.frozen(s, note) for s in tensor.shape])
            else:
                for expr in self.dims_of(tensor):
                    self.space.freeze(expr, note)
        self.unsupported.append(UnsupportedOp(op_name, self.current_scope, reason))

    # -- handled modules -------------------------------------------------------------
    def _channel_count(self, handler: Any, module: torch.nn.Module, side: str, tensors: List[torch.Tensor],
                       qualname: str) -> int:
        """The handler's channel count for ``side``; the traced tensor's when the handler's is wrong or fails."""
        getter = handler.get_out_channels if side == "out" else handler.get_in_channels
        try:
            reported: Optional[int] = int(getter(module))
            problem = ""
        except Exception as exc:
            reported, problem = None, f"get_{side}_channels raised {type(exc).__name__}: {exc}"
        tensor = tensors[0] if tensors else None
        if tensor is None or tensor.ndim == 0 or hv.declares_links(handler) or \
                (reported is not None and reported in tuple(tensor.shape)):
            if reported is None:
                raise GraphError(f"{qualname} ({type(module).__name__}): {problem}")
            return reported
        dim = hv.likely_channel_dim(handler, module, tensor, side)
        actual = int(tensor.shape[dim])
        warn(f"{qualname} ({type(module).__name__}): handler {hv.handler_name(handler)} "
             f"{problem or f'reports {reported} {side}put channels'}, but its {side}put tensor has shape "
             f"{tuple(tensor.shape)}; tracing uses {actual} (dim {dim}). Fix get_{side}_channels, or give the "
             "handler a channel_dim(layer, tensor, side) method")
        return actual

    def _slots_for(self, module: torch.nn.Module, qualname: str, handler: Any, inputs: List[torch.Tensor],
                   outputs: List[torch.Tensor]) -> Tuple[Slot, Slot]:
        found = self.module_slots.get(id(module))
        if found is not None:
            return found
        n_in = self._channel_count(handler, module, "in", inputs, qualname)
        n_out = self._channel_count(handler, module, "out", outputs, qualname)
        groups = hv.channel_groups(handler, module)
        coupled = hv.is_coupled(handler)
        space = self.space
        if groups > 1 and n_in % groups == 0 and n_out % groups == 0:
            depthwise = n_in == groups
            group_atom = space.atom(groups, 0 if depthwise else STRUCTURED, f"{qualname}: number of groups")
            in_expr: Expr = group_atom if depthwise else resolve(Prod((group_atom, space.atom(n_in // groups))))
            out_expr = in_expr if coupled else resolve(Prod((group_atom, space.atom(n_out // groups))))
        else:
            in_expr = space.atom(n_in)
            out_expr = in_expr if coupled else space.atom(n_out)
        target = Target(module, qualname)
        in_slot = Slot("in", target, handler, in_expr, serial=len(self.slots))
        out_slot = Slot("out", target, handler, out_expr, serial=len(self.slots) + 1)
        self.slots.extend((in_slot, out_slot))
        self.module_slots[id(module)] = (in_slot, out_slot)
        return in_slot, out_slot

    def module_call(self, module: torch.nn.Module, inputs: List[torch.Tensor], outputs: List[torch.Tensor]) -> None:
        handler = self.handlers[id(module)]
        qualname = self.module_names.get(id(module), type(module).__name__)
        in_serials = [self.serial_of(t) for t in inputs]
        in_slot, out_slot = self._slots_for(module, qualname, handler, inputs, outputs)
        in_links, out_links = hv.tensor_links(handler, module, inputs, outputs, qualname,
                                              (in_slot.expr.size, out_slot.expr.size))
        space = self.space
        for link in in_links:
            slot = out_slot if link.side == "out" else in_slot
            dims = self.dims_of(inputs[link.index])
            expr = slot.expr if link.repeat == 1 else Cat([slot.expr] * link.repeat)
            try:
                space.unify(dims[link.dim], expr)
            except DimError as exc:
                note = f"{qualname}: channels do not match its input ({exc})"
                space.freeze(dims[link.dim], note)
                space.freeze(expr, note)
            slot.linked = True
        hv.freeze_unlinked_inputs(space, handler, inputs, in_links, self.dims_of, qualname)
        reference = inputs[0] if inputs else None
        ref_dims = self.dims_of(reference) if reference is not None else []
        out_serials = []
        for index, tensor in enumerate(outputs):
            if self._serial(tensor) is not None and any(tensor is t for t in inputs):
                out_serials.append(self._serial(tensor))
                continue
            dims: List[Expr] = []
            for d, size in enumerate(tensor.shape):
                if reference is not None and reference.ndim == tensor.ndim and reference.shape[d] == size:
                    dims.append(ref_dims[d])
                else:
                    dims.append(space.frozen(size, f"size computed inside {qualname}"))
            for link in out_links:
                if link.index == index:
                    slot = in_slot if link.side == "in" else out_slot
                    expr = slot.expr if link.repeat == 1 else Cat([slot.expr] * link.repeat)
                    if expr.size != tensor.shape[link.dim]:
                        raise GraphError(
                            f"{qualname} ({type(module).__name__}): handler {hv.handler_name(handler)} reports "
                            f"{expr.size} output channels but its output has {tensor.shape[link.dim]} at dim {link.dim}"
                        )
                    dims[link.dim] = expr
                    slot.linked = True
            out_serials.append(self.set_dims(tensor, dims))
        self.nodes.append(Node("module", qualname, in_serials, out_serials, self.current_scope, (in_slot, out_slot)))
