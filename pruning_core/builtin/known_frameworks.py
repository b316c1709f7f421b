"""Advice for layers of frameworks whose handlers ship in optional plugins."""

from __future__ import annotations

from typing import Any, Optional

from ..hookspecs import hookimpl

# top-level package of a layer class -> (plugin entry-point name, pip extra)
KNOWN_FRAMEWORKS = {
    "transformers": ("hf", "hf"),
    "timm": ("timm", "timm"),
    "ultralytics": ("yolo", "yolo"),
}


@hookimpl(trylast=True)
def resolve_missing_handler_hint(module: Any) -> Optional[str]:
    package = type(module).__module__.split(".", 1)[0]
    known = KNOWN_FRAMEWORKS.get(package)
    if known is None:
        return None
    from .._plugins import get_hub

    plugin, extra = known
    info = get_hub().infos.get(plugin)
    if info is None:
        return (f"{package} layers are handled by the '{plugin}' plugin, which is not installed: "
                f'pip install "pruning-core[{extra}]"')
    if info.error:
        return f"the '{plugin}' plugin is installed but failed to load: {info.error}"
    return f"the '{plugin}' plugin is loaded but does not handle {type(module).__name__}"
