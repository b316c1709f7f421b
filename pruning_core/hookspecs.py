"""Every hook a pruning_core plugin can implement. This module is the plugin reference.

A plugin is a module (or object) whose functions carry ``@pruning_core.hookimpl``
and are named after the specs below. Installed distributions announce plugins
with an entry point in the group ``pruning_core``::

    [project.entry-points.pruning_core]
    mylayers = "my_package.plugin"

Conventions, as in pluggy: hooks are called with keyword arguments only, and an
implementation may accept any subset of a spec's parameters. Names say the
calling convention:

* ``register_*()`` returns an iterable of records; every implementation runs.
* ``collect_*(...)`` answers a query; every implementation runs.
* ``resolve_*(...)`` stops at the first implementation that returns non-``None``.
* ``fixup_*(...)`` is a notification after something changed.

The built-in ``torch.nn`` support is itself a set of plugins using these hooks.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import pluggy

PROJECT = "pruning_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_layer_handlers() -> Iterable[Any]:
    """Return :class:`pruning_core.LayerHandlerSpec` records: which handler prunes which layer class.

    A handler owns the parameters of its layer: ``prune_out_channels(layer, idxs)``
    and ``prune_in_channels(layer, idxs)`` remove channels and return the layer,
    ``get_out_channels(layer)`` and ``get_in_channels(layer)`` report sizes.
    Optional methods refine tracing and scoring (see
    :class:`pruning_core.BasePruningFunc`): ``channel_dim``, ``channel_groups``,
    ``channel_params`` and ``tensor_channel_dims``.

    Two plugins registering the same target are a conflict: the handler lookup
    for that class raises :class:`pruning_core.PluginConflictError` naming both.

    Added in 0.1.
    """


@hookspec
def register_op_rules() -> Iterable[Any]:
    """Return :class:`pruning_core.OpRuleSpec` records: how aten operators relate tensor dimensions.

    The tracer records every aten operator run outside a handled layer and asks
    its rule which input and output dimensions are the same channels. An
    operator without a rule freezes every dimension it touches and is listed in
    ``DependencyGraph.unsupported_ops``: it is never guessed to be element-wise.

    Added in 0.1.
    """


@hookspec
def register_importance_criteria() -> Iterable[Any]:
    """Return :class:`pruning_core.ImportanceSpec` records: importance criteria selectable by name.

    Added in 0.1.
    """


@hookspec
def register_pruners() -> Iterable[Any]:
    """Return :class:`pruning_core.PrunerSpec` records: pruning algorithms selectable by name.

    Added in 0.1.
    """


@hookspec
def collect_structure_hints(model: Any) -> Iterable[Any]:
    """Return :class:`pruning_core.StructureHint` records for modules of ``model``.

    Hints tell the graph what tracing alone cannot: how many attention heads a
    projection holds, which output head (classifier, ``lm_head``) to keep, and
    which channels come in equal groups. User arguments (``num_heads=...``,
    ``ignored_layers=...``) take precedence over hints.

    :param model: the root module being pruned.

    Added in 0.1.
    """


@hookspec
def fixup_after_prune(model: Any, modules: Any, graph: Any) -> None:
    """Notification: channels of ``modules`` were just removed; update attributes that depend on them.

    Layer handlers keep their own layer consistent. This hook is for the rest:
    ``num_heads`` or ``head_dim`` on an attention block whose projections
    shrank, a ``Scale`` layer's ``shape``, or a framework config object.
    It runs inside the same transaction as the pruning: if it raises, the model
    is restored.

    :param model: the root module that was pruned (or a trial copy of it).
    :param modules: a mapping from qualified name to module, holding every
        module whose parameters changed and all of their ancestors.
    :param graph: the :class:`pruning_core.DependencyGraph`; for example
        ``graph.channel_structure("layers.0.self_attn.q_proj")`` gives the
        current sizes of the factors of a layer's output channels (heads, head size).

    Added in 0.1.
    """


@hookspec(firstresult=True)
def resolve_missing_handler_hint(module: Any) -> Optional[str]:
    """Return advice for a module class nobody handles, or ``None`` to pass.

    Used in error messages, for example to say which plugin extra to install.

    :param module: the module without a handler.

    Added in 0.1.
    """


@hookspec
def collect_model_state(model: Any) -> Optional[Any]:
    """Return plain data (dicts, lists, strings, numbers) to save with a pruned ``model``, or ``None``.

    For state that lives outside modules, such as a framework config object that
    a ``fixup_after_prune`` implementation edited. It is stored under the
    plugin's name and given back to :func:`restore_model_state` when loading.

    :param model: the pruned model being saved.

    Added in 0.1.
    """


@hookspec
def restore_model_state(model: Any, state: Any) -> None:
    """Apply what :func:`collect_model_state` saved, after the pruned structure was rebuilt.

    :param model: the freshly built model being loaded.
    :param state: this plugin's saved state.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def resolve_model_spec(spec: str) -> Optional[Any]:
    """Build the model named by a command-line spec such as ``"timm:convnext_tiny"``, or return ``None``.

    Return a :class:`pruning_core.ModelSource`. The first plugin that knows the
    spec's scheme wins.

    :param spec: the text after ``pruning-core prune`` / ``inspect``.

    Added in 0.1.
    """


@hookspec
def register_model_schemes() -> Iterable[Any]:
    """Return :class:`pruning_core.ModelScheme` records naming the spec schemes this plugin resolves.

    Used to list the known schemes when a spec is not understood.

    Added in 0.1.
    """
