"""Every hook a pruning_core plugin can implement. This module is the plugin reference.

A plugin is a module (or object) whose functions carry ``@pruning_core.hookimpl``
and are named after the specs below. Installed distributions announce plugins
with an entry point in the group ``pruning_core``::

    [project.entry-points.pruning_core]
    mylayers = "my_package.plugin"

Conventions, as in pluggy: hooks are called with keyword arguments only, and an
implementation may accept any subset of a spec's parameters. Names say the
calling convention:

* ``register_*()`` returns (or yields) records; every implementation runs.
* ``collect_*(...)`` answers a query with records; every implementation runs.
* ``resolve_*(...)`` stops at the first implementation that returns non-``None``.
* ``fixup_*(...)`` and ``after_*(...)`` are notifications after something changed.

An implementation of a ``register_*`` or ``collect_*`` hook in a third-party plugin
that raises (or returns something that is not a record) is recorded as that
plugin's load error and skipped; a built-in plugin, or any plugin under
``PRUNING_CORE_STRICT_PLUGINS=1``, raises :class:`pruning_core.PluginError`
naming it. Records are stamped with the plugin that returned them. Two
providers of one key (a layer class, an op, a criterion, a pruner, a scheme, a
state codec) are a conflict: looking that key up raises
:class:`pruning_core.PluginConflictError` naming both, other keys keep working.

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
def register_model_schemes() -> Iterable[Any]:
    """Return :class:`pruning_core.ModelScheme` records: model specs this plugin builds.

    ``pruning-core prune timm:convnext_tiny`` finds the scheme ``timm`` and calls
    its ``resolve(spec)``, which returns a :class:`pruning_core.ModelSource`. The
    schemes are also listed when a spec is not understood. Two plugins
    registering one scheme are a conflict when a spec of that scheme is resolved.

    Added in 0.1. Changed in 0.2: the record carries ``resolve``, which replaces
    the ``resolve_model_spec(spec)`` hook.
    """


@hookspec
def register_state_codecs() -> Iterable[Any]:
    """Return :class:`pruning_core.StateCodec` records: state outside modules saved with a pruned model.

    For state such as a framework config object that an ``after_step``
    implementation edited. :func:`pruning_core.save_pruned` stores what each
    codec's ``collect(model)`` returns under the codec's name, and
    :func:`pruning_core.load_pruned` hands it to that codec's ``restore(model,
    state)`` after rebuilding the pruned structure.

    Added in 0.2, replacing the ``collect_model_state(model)`` and
    ``restore_model_state(model, state)`` hooks.
    """


@hookspec
def collect_structure_hints(model: Any) -> Iterable[Any]:
    """Return :class:`pruning_core.StructureHint` and :class:`pruning_core.AttentionLayout` records for ``model``.

    Hints tell the graph what tracing alone cannot: which output head
    (classifier, ``lm_head``) to keep, and which channels come in equal groups.
    An attention layout says where a block keeps its heads (its projections and
    the attributes holding ``num_heads``, ``head_dim``, the scale...): the core
    derives each projection's heads from it, and updates those attributes after
    pruning. User arguments (``num_heads=...``, ``ignored_layers=...``) take
    precedence over hints. Called before pruning and, for the layouts, once per
    dependency graph: declare layouts from attribute names, not from sizes that
    pruning changes.

    :param model: the root module being pruned.

    Added in 0.1. Changed in 0.2: may return ``AttentionLayout`` records.
    """


@hookspec
def fixup_after_prune(model: Any, modules: Any, graph: Any) -> None:
    """Notification: channels of ``modules`` were just removed; update attributes that depend on them.

    Layer handlers keep their own layer consistent, and the core updates the
    attributes that attention layouts name. This hook is for the rest: a
    ``Scale`` layer's ``shape``, a classifier head's ``in_features``. It runs after
    every pruned group, also on trial copies of the model (find modules by name,
    never by identity), inside the same transaction as the pruning: if it
    raises, the model is restored. Framework-wide state (a config object)
    belongs in :func:`after_step`.

    :param model: the root module that was pruned (or a trial copy of it).
    :param modules: a mapping from qualified name to module, holding every
        module whose parameters changed and all of their ancestors.
    :param graph: the :class:`pruning_core.DependencyGraph`; for example
        ``graph.channel_structure("layers.0.self_attn.q_proj")`` gives the
        current sizes of the factors of a layer's output channels (heads, head size).

    Added in 0.1.
    """


@hookspec
def after_step(model: Any, graph: Any) -> None:
    """Notification: a pruning step is complete; bring model-wide state in step with the pruned modules.

    Called once per step, when its groups have been removed, inside the step's
    transaction and before the pruned model is verified: at the end of a
    pruner's ``step()`` (or interactive step), and after a ``group.prune()``
    made outside a pruner's step (a step of its own). If it raises, the step is
    undone. Before editing an object that is not a module (a config), call
    ``graph.remember(obj)`` so that an undone step restores it too. Not called
    on trial copies.

    :param model: the root module that was pruned.
    :param graph: the :class:`pruning_core.DependencyGraph` it was pruned through.

    Added in 0.2.
    """


@hookspec
def tracing_context(model: Any) -> Any:
    """Return a context manager to enter around each forward pass the tracer runs, or ``None``.

    For state that must differ while pruning_core traces ``model``. While tracing, the sizes
    a forward reads from tensor shapes are ints that remember the dimension they measure; a
    library that caches what it computes from shapes must not hand such an int to a later
    call, where it would tie two unrelated layers together (the built-in einops support turns
    einops' shape cache off). Called once per traced forward (a graph may trace more than
    once); the contexts are entered after the tracer's own patches and exited first.

    :param model: the module being traced.

    Added in 0.2.
    """


@hookspec(firstresult=True)
def resolve_missing_handler_hint(module: Any) -> Optional[str]:
    """Return advice for a module class nobody handles, or ``None`` to pass.

    Used in error messages, for example to say which plugin extra to install.

    :param module: the module without a handler.

    Added in 0.1.
    """


# Hooks of 0.1 that are gone, with how to port an implementation (shown when a plugin still has one).
REPLACED_HOOKS = {
    "resolve_model_spec": "return ModelScheme(scheme, example, description, resolve=...) records from "
                          "register_model_schemes; resolve(spec) builds the ModelSource",
    "collect_model_state": "return StateCodec(name, collect, restore) records from register_state_codecs",
    "restore_model_state": "return StateCodec(name, collect, restore) records from register_state_codecs",
}
