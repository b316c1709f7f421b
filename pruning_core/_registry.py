"""The one registry class every kind of plugin record is looked up in."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import PluginConflictError, UnknownNameError
from .records import class_key


class Registry:
    """Records by key, with the one conflict rule every kind of record shares.

    Two providers of one key are a conflict: looking that key up raises
    :class:`PluginConflictError` naming both providers (with their distributions
    and versions); every other key keeps working. ``lookup(cls)`` walks a class's
    MRO (layer handlers are registered for base classes too) and caches the answer.
    """

    def __init__(self, kind: str, records: Iterable[Any], key: Callable[[Any], str], advice: str = "",
                 fold_case: bool = False, required: bool = True) -> None:
        self.kind, self._advice, self._fold, self._required = kind, advice, fold_case, required
        self._records: Dict[str, Any] = {}
        self._conflicts: Dict[str, List[Any]] = {}
        for record in records:
            name = self._key(key(record))
            if name in self._conflicts:
                self._conflicts[name].append(record)
            elif name in self._records:
                self._conflicts[name] = [self._records.pop(name), record]
            else:
                self._records[name] = record
        self._mro_cache: Dict[type, Optional[Any]] = {}

    def _key(self, name: str) -> str:
        return name.lower() if self._fold else name

    def names(self) -> List[str]:
        """The keys that resolve (conflicting keys are left out)."""
        return sorted(self._records)

    keys = names

    def conflicts(self) -> Dict[str, List[Any]]:
        return {name: list(records) for name, records in self._conflicts.items()}

    def conflict_lines(self) -> List[str]:
        return [f"{self.kind} {name!r}: " + " and ".join(str(r.provider) for r in records)
                for name, records in sorted(self._conflicts.items())]

    def records(self) -> List[Any]:
        """Every record, for callers that use them all; raises if any key is in conflict."""
        for name in sorted(self._conflicts):
            self._raise_conflict(name, name)
        return [self._records[name] for name in sorted(self._records)]

    def _raise_conflict(self, name: str, shown: str, subject: str = "") -> None:
        providers = " and ".join(str(r.provider) for r in self._conflicts[name])
        advice = self._advice.format(name=subject or shown)
        raise PluginConflictError(f"{self.kind} {shown} is registered by both {providers}; uninstall or disable one "
                                  f"(PRUNING_CORE_DISABLE_PLUGINS=name){advice}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, name: str) -> Any:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name: str) -> Any:
        """The record for ``name``. A miss raises :class:`UnknownNameError` listing close names (or gives
        ``None`` for registries built with ``required=False``, such as op rules)."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = self._key(name)
        if key in self._conflicts:
            self._raise_conflict(key, repr(name))
        found = self._records.get(key)
        if found is not None or not self._required:
            return found
        close = difflib.get_close_matches(key, self._records, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")

    def lookup(self, cls: type) -> Optional[Any]:
        """The record for ``cls`` or its nearest registered base class (keys are dotted class paths), or None."""
        if cls in self._mro_cache:
            return self._mro_cache[cls]
        found: Optional[Any] = None
        for base in cls.__mro__:
            key = class_key(base)
            if key in self._conflicts:
                self._raise_conflict(key, key, cls.__name__)
            if key in self._records:
                found = self._records[key]
                break
            if key == "torch.nn.modules.module.Module":
                break
        self._mro_cache[cls] = found
        return found
