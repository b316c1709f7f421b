"""The plugin manager: built-ins first, entry points on first need, failures isolated.

Nothing here runs at ``import pruning_core``. The first lookup (a handler, a criterion, ``pruning-core
plugins``) builds the manager once: it registers the built-in plugin modules, then loads each entry point
of the group ``pruning_core`` on its own, recording rather than propagating failures.

Environment switches:

* ``PRUNING_CORE_PLUGINS``: comma-separated entry-point names to load, or
  ``none`` for no external plugin (built-ins always load). Unset means all.
* ``PRUNING_CORE_DISABLE_PLUGINS``: comma-separated entry-point names to skip.
* ``PRUNING_CORE_STRICT_PLUGINS=1``: a plugin that fails to load raises.
* ``PRUNING_CORE_TRACE_PLUGINS=1``: log every hook call (its arguments, the plugins that implement it,
  what it returned) to stderr, one line each.

Every hook is called through ``pm.hook.<name>(...)``, so pluggy's argument filtering, tracing and call
monitoring see every call. Each plugin is registered as a proxy whose hook implementations are wrapped
once: failure isolation and provider stamping happen there and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import threading
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Tuple

import pluggy

from . import hookspecs
from ._hint_memo import hint_records
from ._hooktrace import trace_after, trace_before
from ._registry import Registry
from .errors import PluginConflictError, PluginError
from .records import (
    AttentionLayout,
    SizeAttribute,
    ImportanceSpec,
    LayerHandlerSpec,
    ModelScheme,
    OpRuleSpec,
    PrunerSpec,
    Provider,
    StateCodec,
    StructureHint,
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
    "pruning_core.builtin.einops_support",
    "pruning_core.builtin.torchvision_fixups",
    "pruning_core.builtin.model_sources",
    "pruning_core.builtin.attention_fixup",
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


# What each record-returning hook may return; a plugin returning anything else is failing.
RECORD_TYPES: Dict[str, Tuple[type, ...]] = {
    "register_layer_handlers": (LayerHandlerSpec,),
    "register_op_rules": (OpRuleSpec,),
    "register_importance_criteria": (ImportanceSpec,),
    "register_pruners": (PrunerSpec,),
    "register_model_schemes": (ModelScheme,),
    "register_state_codecs": (StateCodec,),
    "collect_structure_hints": (StructureHint, AttentionLayout, SizeAttribute),
}


class _PluginProxy:
    """What is registered with pluggy in a plugin's place: its hook implementations, each guarded.

    Compared by identity (pluggy refuses a plugin equal to one already registered).
    """

    def __init__(self, name: str, plugin: Any) -> None:
        self.__dict__["_pruning_core_plugin"] = plugin
        self.__dict__["_pruning_core_name"] = name

    def __repr__(self) -> str:
        return f"<plugin {self._pruning_core_name!r}: {self._pruning_core_plugin!r}>"


class PluginHub:
    """The pluggy manager plus the registries built from its hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: Dict[str, PluginInfo] = {}
        self.generation = 0  # bumped whenever the set of plugins changes (caches built elsewhere check it)
        self._cache: Dict[str, Any] = {}
        self._lock = threading.RLock()
        if _env_flag("PRUNING_CORE_TRACE_PLUGINS"):
            self.pm.add_hookcall_monitoring(trace_before, trace_after)
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self._register(module, "builtin." + module_name.rsplit(".", 1)[-1], builtin=True)
        self._load_entry_points()

    # -- loading -------------------------------------------------------------
    def known_hooks(self) -> List[str]:
        """Every hook name, read from the spec markers in :mod:`pruning_core.hookspecs`."""
        return sorted(n for n in dir(hookspecs) if self.pm.parse_hookspec_opts(hookspecs, n) is not None)

    def _guard(self, info: PluginInfo, hook_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with failure isolation and provider stamping (pluggy still sees its arguments)."""
        types_ = RECORD_TYPES.get(hook_name)

        @functools.wraps(function)  # pluggy reads the argument names through inspect.unwrap
        def guarded(*args: Any) -> Any:
            if types_ is None:  # notifications and resolve_* hooks: errors are the caller's to handle
                return function(*args)
            try:
                items = list(function(*args) or ())
                for item in items:
                    if not isinstance(item, types_):
                        raise PluginError(f"{hook_name}() returned {type(item).__name__}, expected "
                                          + " or ".join(t.__name__ for t in types_))
            except Exception as exc:  # a broken plugin must not break the others
                message = f"plugin {info.name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                if info.builtin or _env_flag("PRUNING_CORE_STRICT_PLUGINS"):
                    raise PluginError(message) from exc
                info.error = message
                return None
            for item in items:
                if item.provider is None:
                    item._stamp(info.provider)
            return items

        return guarded

    def _proxy(self, plugin: Any, info: PluginInfo) -> _PluginProxy:
        proxy = _PluginProxy(info.name, plugin)
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            if opts.get("wrapper") or opts.get("hookwrapper"):
                guarded = function  # a wrapper around other implementations is passed through as it is
            else:
                guarded = self._guard(info, opts.get("specname") or attr, function)
                setattr(guarded, hookspecs.PROJECT + "_impl", opts)
            proxy.__dict__[attr] = guarded
        return proxy

    def _register(self, plugin: Any, name: str, builtin: bool = False,
                  distribution: Optional[str] = None, version: Optional[str] = None) -> PluginInfo:
        info = PluginInfo(name=name, builtin=builtin, module=getattr(plugin, "__name__", repr(plugin)),
                          distribution=distribution, version=version)
        self.infos[name] = info
        try:
            if self.pm.has_plugin(name):
                raise PluginConflictError(f"a plugin named {name!r} is already registered")
            proxy = self._proxy(plugin, info)
            self.pm.register(proxy, name=name)
            unknown = [hc.name for hc in self.pm.get_hookcallers(proxy) or [] if hc.spec is None]
            if unknown:
                self.pm.unregister(proxy)
                ported = [f"{n} is gone since 0.2: {hookspecs.REPLACED_HOOKS[n]}" for n in unknown
                          if n in hookspecs.REPLACED_HOOKS]
                raise PluginError(f"implements unknown hook(s) {', '.join(unknown)}; known hooks: "
                                  + ", ".join(self.known_hooks()) + "".join(f". {p}" for p in ported))
            info.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(proxy) or [])
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"{type(exc).__name__}: {exc}"
            if builtin or _env_flag("PRUNING_CORE_STRICT_PLUGINS"):
                raise PluginError(f"error registering plugin {name!r}: {info.error}") from exc
        self._changed()
        return info

    def _changed(self) -> None:
        self._cache.clear()
        self.generation += 1

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
            self._changed()

    # -- records -----------------------------------------------------------------
    def _records(self, hook_name: str, **kwargs: Any) -> List[Any]:
        """Call a record-returning hook through pluggy and flatten the answers (in call order)."""
        results = getattr(self.pm.hook, hook_name)(**kwargs)
        return [item for result in results for item in (result or ())]

    def _hint_records(self, model: Any) -> List[Any]:
        return hint_records(model, lambda: self._records("collect_structure_hints", model=model))

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def _registry(self, hook_name: str, kind: str, key: Callable[[Any], str], **options: Any) -> Registry:
        return self._cached(hook_name, lambda: Registry(kind, self._records(hook_name), key, **options))

    def handlers(self) -> Registry:
        """Layer handlers by class path; ``lookup(cls)`` walks the MRO."""
        return self._registry("register_layer_handlers", "layer class", lambda s: s.key,
                              advice=", or pass customized_pruners={{{name}: handler}}")

    def op_rules(self) -> Registry:
        """Op rules by name (``"aten::view"`` or ``"aten::add.Tensor"``); ``get`` gives None when missing."""
        return self._registry("register_op_rules", "op rule", lambda s: s.op, required=False)

    def importance_criteria(self) -> Registry:
        return self._registry("register_importance_criteria", "importance criterion", lambda s: s.name,
                              fold_case=True)

    def pruners(self) -> Registry:
        return self._registry("register_pruners", "pruner", lambda s: s.name, fold_case=True)

    def state_codecs(self) -> Registry:
        return self._registry("register_state_codecs", "state codec", lambda s: s.name)

    def _schemes(self) -> Registry:
        return self._registry("register_model_schemes", "model scheme", lambda s: s.scheme)

    def model_schemes(self) -> List[ModelScheme]:
        """Every scheme record, conflicting ones included (for listings)."""
        registry = self._schemes()
        return [registry.get(n) for n in registry.names()] + [r for rs in registry.conflicts().values() for r in rs]

    def resolve_model_spec(self, spec: str) -> Any:
        """The :class:`ModelSource` for a command-line spec, or None if no scheme claims it."""
        registry = self._schemes()
        scheme, colon, _ = spec.partition(":")
        if colon and (scheme in registry or scheme in registry.conflicts()):
            return registry.get(scheme).resolve(spec)
        for record in self.model_schemes():
            if not record.prefixed:
                source = record.resolve(spec)
                if source is not None:
                    return source
        return None

    def structure_hints(self, model: Any) -> List[StructureHint]:
        """Every plugin's hints for ``model``, with the heads that attention layouts imply."""
        from .builtin.attention_fixup import layout_hints

        hints: List[StructureHint] = []
        for record in self._hint_records(model):
            if isinstance(record, AttentionLayout):
                hints.extend(layout_hints(record, self.out_channels))
            elif isinstance(record, StructureHint):
                hints.append(record)
        return hints

    def size_attributes(self, model: Any) -> List[Tuple[Any, str, bool]]:
        """``(module, attribute, is_count)`` for every size attribute the plugins declare for ``model``."""
        return [(record.module, name, name in record.counts)
                for record in self._hint_records(model)
                if isinstance(record, SizeAttribute) for name in record.attributes + record.counts]

    def attention_layouts(self, model: Any) -> List[AttentionLayout]:
        return [r for r in self._hint_records(model) if isinstance(r, AttentionLayout)]

    def out_channels(self, module: Any) -> Optional[int]:
        """Output channels of ``module`` as its registered handler counts them, or None without one."""
        spec = self.handlers().lookup(type(module))
        return spec.handler.get_out_channels(module) if spec is not None else None

    # -- notifications and queries -------------------------------------------------------
    def fixup_after_prune(self, model: Any, modules: Dict[str, Any], graph: Any = None) -> None:
        self.pm.hook.fixup_after_prune(model=model, modules=modules, graph=graph)

    def after_step(self, model: Any, graph: Any = None) -> None:
        """Tell plugins a pruning step is complete (see :func:`pruning_core.hookspecs.after_step`)."""
        self.pm.hook.after_step(model=model, graph=graph)

    def missing_handler_hint(self, module: Any) -> Optional[str]:
        return self.pm.hook.resolve_missing_handler_hint(module=module)

    def tracing_contexts(self, model: Any) -> List[Any]:
        """What the plugins want entered around each traced forward of ``model`` (see ``tracing_context``)."""
        return [context for context in self.pm.hook.tracing_context(model=model) if context is not None]

    def conflicts(self) -> List[str]:
        """Every conflict between plugins, as readable lines."""
        registries = (self.handlers(), self.op_rules(), self.importance_criteria(), self.pruners(), self._schemes(), self.state_codecs())
        return [line for registry in registries for line in registry.conflict_lines()]


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
