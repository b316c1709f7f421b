"""All-or-nothing pruning: one ``Transaction`` owns everything a step can change.

A transaction remembers, before anything changes, the modules' parameters, buffers and
plain attributes (``ModuleSnapshot``), which channels of each atom are still alive, the
length of the pruning history, and any other object a fix-up edits (a framework config,
through :meth:`Transaction.track`). Leaving the ``with`` block by an exception puts all
of it back. Transactions nest: a group's removal inside a pruner's step inside a user's
interactive session; whatever an inner one learns to protect, the outer ones protect too.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn


class ModuleSnapshot:
    """Remembers parameters, buffers and plain attributes of some modules.

    Handlers that replace tensors instead of editing them (``replaces_tensors = True``,
    as every :class:`pruning_core.BasePruningFunc` does) only need the old objects kept,
    which restores them bit for bit and keeps optimizer-held parameter identities.
    Modules pruned by other handlers, which might edit tensors in place, are passed in
    ``deep`` so that copies of their data are kept too.
    """

    def __init__(self, modules: Iterable[nn.Module] = (), deep: Iterable[nn.Module] = ()) -> None:
        self._saved: List[Tuple[nn.Module, Dict, Dict, Dict]] = []
        self._seen: set = set()
        self._data: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._deep_seen: set = set()
        self.add(modules, deep)

    def add(self, modules: Iterable[nn.Module], deep: Iterable[nn.Module] = ()) -> None:
        """Also remember these modules (those already remembered keep their first state)."""
        for module in modules:
            if id(module) in self._seen:
                continue
            self._seen.add(id(module))
            attrs = {k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
            self._saved.append((module, dict(module._parameters), dict(module._buffers), attrs))
        for module in deep:
            if id(module) in self._deep_seen:
                continue
            self._deep_seen.add(id(module))
            for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
                self._data.append((tensor, tensor.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, data in self._data:
                if tensor.shape == data.shape:
                    tensor.copy_(data)
                else:
                    tensor.data = data
        for module, params, buffers, attrs in self._saved:
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            for key in [k for k in module.__dict__ if k not in attrs and k not in ("_parameters", "_buffers", "_modules")]:
                del module.__dict__[key]
            module.__dict__.update(attrs)
            init_flat = getattr(module, "_init_flat_weights", None)
            if callable(init_flat):  # RNNs cache their weight list
                init_flat()


class Transaction:
    """Undo state for one unit of pruning work; use as a context manager, or call :meth:`rollback`.

    :param modules: modules whose tensors and attributes may change.
    :param atoms: atoms whose alive-masks may change.
    :param history: the pruning history list; entries appended inside are dropped on rollback.
    :param deep: modules whose handlers may edit tensors in place (their data is copied).
    :param parent: the enclosing transaction, which learns of everything tracked here.
    :param step: this transaction is a whole pruning step (see ``DependencyGraph.step``).
    """

    def __init__(self, modules: Iterable[nn.Module] = (), atoms: Iterable[Any] = (),
                 history: Optional[List[Any]] = None, deep: Iterable[nn.Module] = (),
                 parent: Optional["Transaction"] = None, step: bool = False) -> None:
        self.parent = parent
        self.step = step  # a whole pruning step: plugins hear about it once, at its end
        self._modules = ModuleSnapshot()
        self._atoms: Dict[int, Tuple[Any, Any]] = {}
        self._objects: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
        self._history = history
        self._history_length = len(history) if history is not None else 0
        self.done = False
        self.add_modules(modules, deep)
        self.add_atoms(atoms)

    # -- what is protected -------------------------------------------------------------
    def add_modules(self, modules: Iterable[nn.Module], deep: Iterable[nn.Module] = ()) -> None:
        modules, deep = list(modules), list(deep)
        self._modules.add(modules, deep)
        if self.parent is not None and deep:
            self.parent.add_modules((), deep)  # a shallow snapshot cannot undo in-place edits

    def add_atoms(self, atoms: Iterable[Any]) -> None:
        for atom in atoms:
            self._atoms.setdefault(id(atom), (atom, atom.alive))

    def track(self, obj: Any) -> None:
        """Remember ``obj``'s attributes (a shallow copy of its ``__dict__``) before a fix-up edits it.

        Call it before the first edit; enclosing transactions remember it too.
        """
        if id(obj) not in self._objects:
            self._objects[id(obj)] = (obj, dict(obj.__dict__))
        if self.parent is not None:
            self.parent.track(obj)

    # -- outcome -------------------------------------------------------------------------
    def rollback(self) -> None:
        """Put everything back as it was when the transaction started."""
        self._modules.restore()
        for atom, alive in self._atoms.values():
            atom.alive = alive
        for obj, state in self._objects.values():
            obj.__dict__.clear()
            obj.__dict__.update(state)
        if self._history is not None:
            del self._history[self._history_length:]
        self.done = True

    def commit(self) -> None:
        self.done = True

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and not self.done:
            self.rollback()
        elif not self.done:
            self.commit()
        return False


class TransactionStack:
    """The transactions open on one graph, innermost last; fix-ups reach the innermost one."""

    def __init__(self) -> None:
        self._open: List[Transaction] = []

    @property
    def current(self) -> Optional[Transaction]:
        return self._open[-1] if self._open else None

    @property
    def in_step(self) -> bool:
        """Whether a step transaction is open (its owner notifies plugins at its end)."""
        return any(transaction.step for transaction in self._open)

    def open(self, modules: Iterable[nn.Module] = (), atoms: Iterable[Any] = (),
             history: Optional[List[Any]] = None, deep: Iterable[nn.Module] = (), step: bool = False) -> "_Scope":
        transaction = Transaction(modules, atoms, history, deep, parent=self.current, step=step)
        return _Scope(self, transaction)

    def track(self, obj: Any) -> None:
        if self._open:
            self._open[-1].track(obj)


class _Scope:
    """``with stack.open(...) as tx``: pushes the transaction, pops it, rolls back on error."""

    def __init__(self, stack: TransactionStack, transaction: Transaction) -> None:
        self.stack, self.transaction = stack, transaction

    def __enter__(self) -> Transaction:
        self.stack._open.append(self.transaction)
        return self.transaction

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.stack._open.remove(self.transaction)
        return self.transaction.__exit__(exc_type, exc, tb)


def snapshot_deep(handlers_and_modules: Sequence[Tuple[Any, nn.Module]]) -> List[nn.Module]:
    """The modules whose handlers do not promise to replace tensors instead of editing them."""
    return [module for handler, module in handlers_and_modules if not getattr(handler, "replaces_tensors", False)]
