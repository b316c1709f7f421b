"""Model specs the core resolves: ``torchvision:NAME``, ``file:path.py:factory`` and saved pruned models."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from ..errors import ConfigurationError
from ..hookspecs import hookimpl
from ..records import ModelScheme, ModelSource


def torchvision_inputs(name: str) -> Any:
    """Example inputs that fit a torchvision model family."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.video):
        return torch.randn(1, 3, 16, 112, 112)
    if name in torchvision.models.list_models(module=torchvision.models.optical_flow):
        return (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return ([torch.rand(3, 224, 224)],)
    size = 299 if name.startswith("inception") else 224
    return torch.randn(1, 3, size, size)


def _torchvision(name: str, spec: str) -> ModelSource:
    try:
        import torchvision
    except ImportError:  # pragma: no cover - torchvision is optional
        raise ConfigurationError("the torchvision: scheme needs torchvision: pip install torchvision") from None
    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=3)
        raise ConfigurationError(f"torchvision has no model {name!r}" +
                                 (f"; did you mean {', '.join(close)}?" if close else ""))
    model = torchvision.models.get_model(name).eval()
    return ModelSource(model, torchvision_inputs(name), spec, description=f"torchvision {name} (random weights)")


def _file(target: str, spec: str) -> ModelSource:
    path, _, factory_name = target.rpartition(":")
    if not path or not factory_name:
        raise ConfigurationError(f"file specs look like file:path/to/module.py:factory, got {spec!r}")
    if not os.path.isfile(path):
        raise ConfigurationError(f"{path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_pruning_core_user_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigurationError(f"{path} has no callable {factory_name!r}")
    built = factory()
    if isinstance(built, ModelSource):
        built.spec = spec
        return built
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        return ModelSource(built[0], built[1], spec, description=f"{factory_name}() from {path}")
    if isinstance(built, nn.Module):
        return ModelSource(built, None, spec, description=f"{factory_name}() from {path}")
    raise ConfigurationError(f"{factory_name}() must return a model, (model, example_inputs) or a ModelSource")


def rebuild_pruned(where: str, base: Any, load: Callable[[nn.Module], Any], hint: str = "",
                   build: Optional[Callable[[str], Optional[ModelSource]]] = None) -> ModelSource:
    """The unpruned model ``base`` (the spec a saved pruned model records), built and given ``load``'s weights.

    :param where: the saved file or directory, for messages.
    :param load: ``load(model)`` rebuilds the pruned structure and weights on the fresh model.
    :param hint: appended to the message when the record has no spec.
    :param build: how to build a spec (default: the plugins' schemes).
    """
    from .._plugins import get_hub

    if not isinstance(base, str) or not base:
        raise ConfigurationError(f"{where} does not say how to build its unpruned model (no model_spec){hint}")
    source = (build or get_hub().resolve_model_spec)(base)
    if source is None:
        raise ConfigurationError(f"{where} was pruned from {base!r}, which no installed plugin can build")
    load(source.model)
    source.spec = base
    source.description = f"pruned {source.description or base} loaded from {where}"
    return source


def _saved(directory: str, spec: str) -> ModelSource:
    from ..serialization import load_pruned, read_record

    return rebuild_pruned(directory, read_record(directory).get("model_spec"),
                          lambda model: load_pruned(model, directory))


def _saved_directory(spec: str) -> Optional[ModelSource]:
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "pruning.json")):
        return _saved(spec, spec)
    return None


@hookimpl
def register_model_schemes() -> List[ModelScheme]:
    return [
        ModelScheme("torchvision", "torchvision:resnet50", "a torchvision model with random weights",
                    resolve=lambda spec: _torchvision(spec.partition(":")[2], spec)),
        ModelScheme("file", "file:path/to/module.py:factory", "factory() returning a model or (model, inputs)",
                    resolve=lambda spec: _file(spec.partition(":")[2], spec)),
        ModelScheme("saved", "path/to/pruned_directory", "a model saved by pruning-core prune",
                    resolve=_saved_directory, prefixed=False),
    ]
