"""Slots: the places where channels live (module inputs and outputs, parameter dims)."""

from __future__ import annotations

from typing import Any, Optional

from .dims import Expr, resolve


class Target:
    """What a dependency acts on: a module, or one parameter or buffer of a module.

    ``target.module`` is the module itself, or for a parameter the current
    ``nn.Parameter`` object (it changes when the parameter is pruned).
    """

    __slots__ = ("owner", "name", "attr")

    def __init__(self, owner: Any, name: str, attr: Optional[str] = None) -> None:
        self.owner = owner
        self.name = name
        self.attr = attr

    @property
    def module(self) -> Any:
        if self.attr is None:
            return self.owner
        return getattr(self.owner, self.attr)

    @property
    def qualname(self) -> str:
        if self.attr is None:
            return self.name or "<model>"
        return f"{self.name}.{self.attr}" if self.name else self.attr

    def __repr__(self) -> str:
        return self.qualname


class Slot:
    """One side of a module ("out"/"in") or one dimension of a parameter ("param").

    ``expr`` is the slot's dimension expression; ``handler`` prunes it.
    """

    __slots__ = ("kind", "target", "handler", "expr", "dim", "linked", "serial")

    def __init__(self, kind: str, target: Target, handler: Any, expr: Expr, dim: int = 0, serial: int = 0) -> None:
        self.kind = kind
        self.target = target
        self.handler = handler
        self.expr = expr
        self.dim = dim
        self.linked = False
        self.serial = serial

    @property
    def is_param(self) -> bool:
        """A raw tensor slot (a parameter or a buffer used directly), pruned along ``dim``."""
        return self.kind in ("param", "buffer")

    def resolved(self) -> Expr:
        return resolve(self.expr)

    def describe(self) -> str:
        if self.is_param:
            return f"{self.target.qualname} (dim {self.dim})"
        return self.target.qualname

    def __repr__(self) -> str:
        return f"Slot({self.kind}, {self.describe()}, {self.resolved()!r})"
