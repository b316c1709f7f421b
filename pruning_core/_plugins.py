"""The plugin manager: built-ins first, entry points on first need, failures isolated.

Nothing here runs at ``import pruning_core``. The first lookup (a handler, a
criterion, ``pruning-core plugins``) builds the manager once: it registers the
built-in plugin modules, then loads each entry point of the group
``pruning_core`` on its own, recording rather than propagating failures.

Environment switches:

* ``PRUNING_CORE_PLUGINS``: comma-separated entry-point names to load, or
  ``none`` for no external plugin (built-ins always load). Unset means all.
* ``PRUNING_CORE_DISABLE_PLUGINS``: comma-separated entry-point names to skip.
* ``PRUNING_CORE_STRICT_PLUGINS=1``: a plugin that fails to load raises.
* ``PRUNING_CORE_TRACE_PLUGINS=1``: log every hook call to stderr.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys
import threading
from importlib import metadata
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginError, UnknownNameError
from .records import (
    ImportanceSpec,
    LayerHandlerSpec,
    ModelScheme,
    OpRuleSpec,
    PrunerSpec,
    Provider,
    StructureHint,
    class_key,
)

ENTRY_POINT_GROUP = "pruning_core"

BUILTIN_PLUGINS: Tuple[str, ...] = (
    "pruning_core.builtin.handlers.conv",
    "pruning_core.builtin.handlers.linear",
    "pruning_core.builtin.handlers.batchnorm",
    "pruning_core.builtin.handlers.layernorm",
    "pruning_core.builtin.handlers.groupnorm",
    "pruning_core.builtin.handlers.instancenorm",
    "pruning_core.builtin.handlers.rmsnorm",
    "pruning_core.builtin.handlers.prelu",
    "pruning_core.builtin.handlers.embedding",
    "pruning_core.builtin.handlers.attention",
    "pruning_core.builtin.handlers.rnn",
    "pruning_core.builtin.handlers.parameter",
    "pruning_core.builtin.ops.pointwise",
    "pruning_core.builtin.ops.shape",
    "pruning_core.builtin.ops.indexing",
    "pruning_core.builtin.ops.linalg",
    "pruning_core.builtin.ops.nn",
    "pruning_core.builtin.ops.reductions",
    "pruning_core.builtin.ops.factory",
    "pruning_core.builtin.known_frameworks",
    "pruning_core.builtin.torchvision_fixups",
    "pruning_core.builtin.model_sources",
    "pruning_core.builtin.importance",
    "pruning_core.builtin.pruners",
)


@dataclasses.dataclass
class PluginInfo:
    """What ``pruning-core plugins`` shows for one plugin."""

    name: str
    builtin: bool
    module: str = ""
    distribution: Optional[str] = None
    version: Optional[str] = None
    hooks: List[str] = dataclasses.field(default_factory=list)
    error: Optional[str] = None

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _env_list(name: str) -> Optional[List[str]]:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class NamedRegistry:
    """Name to record, for criteria and pruners; lookups suggest close matches."""

    def __init__(self, kind: str, specs: Iterable[Any]) -> None:
        self.kind = kind
        self._specs: Dict[str, Any] = {}
        self._conflicts: Dict[str, List[Any]] = {}
        for spec in specs:
            key = spec.name.lower()
            if key in self._conflicts:
                self._conflicts[key].append(spec)
            elif key in self._specs:
                self._conflicts[key] = [self._specs.pop(key), spec]
            else:
                self._specs[key] = spec

    def names(self) -> List[str]:
        return sorted(self._specs)

    def conflicts(self) -> Dict[str, List[Any]]:
        return dict(self._conflicts)

    def get(self, name: str) -> Any:
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key in self._conflicts:
            providers = " and ".join(str(s.provider) for s in self._conflicts[key])
            raise PluginConflictError(
                f"{self.kind} {name!r} is registered by both {providers}; uninstall or disable one "
                "(PRUNING_CORE_DISABLE_PLUGINS=name)"
            )
        try:
            return self._specs[key]
        except KeyError:
            close = difflib.get_close_matches(key, self._specs, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}"
            ) from None


class HandlerRegistry:
    """Layer class (by dotted path) to handler, with conflicts kept for the error."""

    def __init__(self, specs: Iterable[LayerHandlerSpec]) -> None:
        self._specs: Dict[str, LayerHandlerSpec] = {}
        self._conflicts: Dict[str, List[LayerHandlerSpec]] = {}
        for spec in specs:
            key = spec.key
            if key in self._conflicts:
                self._conflicts[key].append(spec)
            elif key in self._specs:
                self._conflicts[key] = [self._specs.pop(key), spec]
            else:
                self._specs[key] = spec
        self._cache: Dict[type, Optional[LayerHandlerSpec]] = {}

    def keys(self) -> List[str]:
        return sorted(self._specs)

    def conflicts(self) -> Dict[str, List[LayerHandlerSpec]]:
        return dict(self._conflicts)

    def lookup(self, cls: type) -> Optional[LayerHandlerSpec]:
        """The spec for ``cls`` or its nearest registered base class, or ``None``."""
        if cls in self._cache:
            return self._cache[cls]
        found: Optional[LayerHandlerSpec] = None
        for base in cls.__mro__:
            key = class_key(base)
            if key in self._conflicts:
                providers = " and ".join(str(s.provider) for s in self._conflicts[key])
                raise PluginConflictError(
                    f"layer class {key} has handlers from both {providers}; uninstall or disable one "
                    f"(PRUNING_CORE_DISABLE_PLUGINS=name), or pass customized_pruners={{{cls.__name__}: handler}}"
                )
            if key in self._specs:
                found = self._specs[key]
                break
            if key == "torch.nn.modules.module.Module":
                break
        self._cache[cls] = found
        return found


class PluginHub:
    """The pluggy manager plus the registries built from its hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: Dict[str, PluginInfo] = {}
        self._cache: Dict[str, Any] = {}
        self._lock = threading.RLock()
        self._tracing = _env_flag("PRUNING_CORE_TRACE_PLUGINS")
        if self._tracing:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self._register(module, "builtin." + module_name.rsplit(".", 1)[-1], builtin=True)
        self._load_entry_points()

    # -- loading -------------------------------------------------------------
    def _register(self, plugin: Any, name: str, builtin: bool = False,
                  distribution: Optional[str] = None, version: Optional[str] = None) -> PluginInfo:
        info = PluginInfo(name=name, builtin=builtin, module=getattr(plugin, "__name__", repr(plugin)),
                          distribution=distribution, version=version)
        self.infos[name] = info
        try:
            if self.pm.has_plugin(name):
                raise PluginConflictError(f"a plugin named {name!r} is already registered")
            self.pm.register(plugin, name=name)
            unknown = [hc.name for hc in self.pm.get_hookcallers(plugin) or [] if hc.spec is None]
            if unknown:
                self.pm.unregister(plugin)
                raise PluginError(
                    f"implements unknown hook(s) {', '.join(unknown)}; known hooks: "
                    + ", ".join(sorted(n for n in dir(hookspecs) if n.startswith(("register_", "collect_", "resolve_", "fixup_"))))
                )
            info.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(plugin) or [])
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"{type(exc).__name__}: {exc}"
            if builtin or _env_flag("PRUNING_CORE_STRICT_PLUGINS"):
                raise PluginError(f"error registering plugin {name!r}: {info.error}") from exc
        self._cache.clear()
        return info

    def _load_entry_points(self) -> None:
        selected = _env_list("PRUNING_CORE_PLUGINS")
        if selected is not None and [s.lower() for s in selected] == ["none"]:
            return
        disabled = set(_env_list("PRUNING_CORE_DISABLE_PLUGINS") or [])
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in disabled or (selected is not None and ep.name not in selected):
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:
                info = PluginInfo(name=ep.name, builtin=False, module=ep.value, distribution=dist_name,
                                  version=dist_version, error=f"{type(exc).__name__}: {exc}")
                self.infos[ep.name] = info
                if _env_flag("PRUNING_CORE_STRICT_PLUGINS"):
                    raise PluginError(f"error importing plugin {ep.name!r} from {dist_name}: {info.error}") from exc
                continue
            self._register(plugin, ep.name, distribution=dist_name, version=dist_version)

    def register(self, plugin: Any, name: str) -> PluginInfo:
        """Register an in-process plugin (tests, notebooks). Raises if it fails."""
        with self._lock:
            info = self._register(plugin, name)
            if info.error:
                del self.infos[name]
                raise PluginError(f"error registering plugin {name!r}: {info.error}")
            return info

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self.infos.pop(name, None)
            self._cache.clear()

    # -- collecting records ----------------------------------------------------
    def _collect(self, hook_name: str, record_type: type, **kwargs: Any) -> List[Any]:
        records: List[Any] = []
        caller = getattr(self.pm.hook, hook_name)
        # Call each implementation on its own so every record carries its provider.
        for impl in reversed(caller.get_hookimpls()):
            info = self.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, builtin=False)
            try:
                result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
                items = list(result or ())
                for item in items:
                    if not isinstance(item, record_type):
                        raise PluginError(
                            f"{hook_name}() returned {type(item).__name__}, expected {record_type.__name__}"
                        )
            except Exception as exc:
                message = f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                if info.builtin or _env_flag("PRUNING_CORE_STRICT_PLUGINS"):
                    raise PluginError(message) from exc
                info.error = message
                continue
            for item in items:
                if item.provider is None:
                    item._stamp(info.provider)
            if self._tracing:
                sys.stderr.write(f"pruning_core: {hook_name}() in plugin {impl.plugin_name!r} "
                                 f"returned {len(items)} record(s)\n")
            records.extend(items)
        return records

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def handlers(self) -> HandlerRegistry:
        return self._cached("handlers", lambda: HandlerRegistry(self._collect("register_layer_handlers", LayerHandlerSpec)))

    def op_rules(self) -> Dict[str, OpRuleSpec]:
        def build() -> Dict[str, OpRuleSpec]:
            rules: Dict[str, OpRuleSpec] = {}
            for spec in self._collect("register_op_rules", OpRuleSpec):
                if spec.op in rules:
                    raise PluginConflictError(
                        f"op rule {spec.op} is registered by both {rules[spec.op].provider} and {spec.provider}"
                    )
                rules[spec.op] = spec
            return rules
        return self._cached("op_rules", build)

    def importance_criteria(self) -> NamedRegistry:
        return self._cached("importance", lambda: NamedRegistry(
            "importance criterion", self._collect("register_importance_criteria", ImportanceSpec)))

    def pruners(self) -> NamedRegistry:
        return self._cached("pruners", lambda: NamedRegistry(
            "pruner", self._collect("register_pruners", PrunerSpec)))

    def structure_hints(self, model: Any) -> List[StructureHint]:
        return self._collect("collect_structure_hints", StructureHint, model=model)

    def fixup_after_prune(self, model: Any, modules: Dict[str, Any], graph: Any = None) -> None:
        self.pm.hook.fixup_after_prune(model=model, modules=modules, graph=graph)

    def model_schemes(self) -> List[ModelScheme]:
        return self._cached("schemes", lambda: self._collect("register_model_schemes", ModelScheme))

    def resolve_model_spec(self, spec: str) -> Any:
        return self.pm.hook.resolve_model_spec(spec=spec)

    def missing_handler_hint(self, module: Any) -> Optional[str]:
        return self.pm.hook.resolve_missing_handler_hint(module=module)

    def conflicts(self) -> List[str]:
        """Every conflict between plugins, as readable lines."""
        lines = []
        for key, specs in self.handlers().conflicts().items():
            lines.append(f"layer {key}: " + " and ".join(str(s.provider) for s in specs))
        for registry in (self.importance_criteria(), self.pruners()):
            for key, specs in registry.conflicts().items():
                lines.append(f"{registry.kind} {key!r}: " + " and ".join(str(s.provider) for s in specs))
        return lines


_HUB: Optional[PluginHub] = None
_HUB_LOCK = threading.Lock()


def get_hub() -> PluginHub:
    """The process-wide plugin hub, built on first call."""
    global _HUB
    if _HUB is None:
        with _HUB_LOCK:
            if _HUB is None:
                _HUB = PluginHub()
    return _HUB


def reset_hub() -> None:
    """Forget the hub so the next lookup rebuilds it (tests, changed environment)."""
    global _HUB
    with _HUB_LOCK:
        _HUB = None


def is_loaded() -> bool:
    """Whether the plugin hub has been built in this process."""
    return _HUB is not None
