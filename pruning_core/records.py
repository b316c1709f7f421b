"""Frozen records that plugins return from their hooks (``register_*``, ``collect_structure_hints``).

Each record validates itself when created, so a malformed plugin fails at load time with a
message naming the record and the field. The plugin manager stamps every record with the
plugin that produced it (``provider``); conflict errors use it to name both sides."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .errors import PluginError

HANDLER_METHODS = ("prune_out_channels", "prune_in_channels", "get_out_channels", "get_in_channels")


def class_key(cls: type) -> str:
    """The dotted path that identifies ``cls`` in registries: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclasses.dataclass(frozen=True)
class Provider:
    """Who registered a record: plugin name, distribution and version."""

    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None

    def __str__(self) -> str:
        if self.distribution:
            return f"plugin {self.name!r} ({self.distribution} {self.version or ''})".replace(" )", ")")
        return f"plugin {self.name!r}"


class _Stamped:
    """Mixin: a ``provider`` slot the plugin manager fills in after creation."""

    def _stamp(self, provider: Provider) -> None:
        object.__setattr__(self, "provider", provider)


@dataclasses.dataclass(frozen=True)
class LayerHandlerSpec(_Stamped):
    """Declares that ``handler`` prunes modules of class ``target``.

    :param target: a module class, or its dotted path ``"package.module.Class"``
        so that a plugin can name a class without importing its framework.
    :param handler: an object with ``prune_out_channels(layer, idxs)``,
        ``prune_in_channels(layer, idxs)``, ``get_out_channels(layer)`` and
        ``get_in_channels(layer)``. If ``prune_in_channels`` is the same function
        as ``prune_out_channels``, the layer's input and output channels are
        coupled (as in BatchNorm).
    """

    target: Union[type, str]
    handler: Any
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            if "." not in self.target or self.target.startswith(".") or self.target.endswith("."):
                raise PluginError(f"LayerHandlerSpec target {self.target!r} is not a dotted path; "
                                  "write it as 'package.module.ClassName'")
        elif not isinstance(self.target, type):
            raise PluginError(f"LayerHandlerSpec target must be a class or a dotted path string, got "
                              f"{type(self.target).__name__}")
        missing = [m for m in HANDLER_METHODS if not callable(getattr(self.handler, m, None))]
        if missing:
            raise PluginError(
                f"handler {self.handler!r} for {self.key} lacks {', '.join(missing)}; "
                "a layer handler needs prune_out_channels, prune_in_channels, get_out_channels and get_in_channels"
            )

    @property
    def key(self) -> str:
        """The registry key: the dotted path of the target class."""
        return self.target if isinstance(self.target, str) else class_key(self.target)


@dataclasses.dataclass(frozen=True)
class OpRuleSpec(_Stamped):
    """Declares how an aten operator relates the dimensions of its tensors.

    :param op: the operator name, ``"aten::view"`` for every overload or
        ``"aten::add.Tensor"`` for one overload.
    :param rule: ``rule(call)`` where ``call`` is a :class:`pruning_core.graph.OpCall`.
    """

    op: str
    rule: Callable[[Any], None]
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or "::" not in self.op:
            raise PluginError(f"OpRuleSpec op must look like 'aten::view', got {self.op!r}")
        if not callable(self.rule):
            raise PluginError(f"OpRuleSpec rule for {self.op} is not callable")


@dataclasses.dataclass(frozen=True)
class ImportanceSpec(_Stamped):
    """A named importance criterion.

    :param name: the name users select it by, for example ``"l2"``.
    :param factory: a callable returning an importance object; usually the class.
    :param description: one line shown by ``pruning-core plugins``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("ImportanceSpec", self.name)
        if not callable(self.factory):
            raise PluginError(f"ImportanceSpec {self.name!r}: factory is not callable")


@dataclasses.dataclass(frozen=True)
class PrunerSpec(_Stamped):
    """A named pruning algorithm.

    :param name: the name users select it by, for example ``"magnitude"``.
    :param factory: the pruner class (a :class:`pruning_core.pruner.BasePruner` subclass).
    :param description: one line shown by ``pruning-core plugins``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("PrunerSpec", self.name)
        if not callable(self.factory):
            raise PluginError(f"PrunerSpec {self.name!r}: factory is not callable")


@dataclasses.dataclass(frozen=True)
class StructureHint(_Stamped):
    """Structure a plugin knows about a module, so users need not pass it.

    :param module: the module the hint is about.
    :param num_heads: attention heads whose channels live in ``module``'s output (for a fused qkv
        projection, the heads of each of q, k and v).
    :param head_dim: the size of one head, when it is not ``channels / num_heads``.
    :param out_channel_groups: the output channels form this many equal groups of equal sizes.
    :param in_channel_groups: the same, for input channels.
    :param keep: never prune this module's output channels (a classifier or LM head).
    :param prunable_heads: whether whole heads may be removed.
    :param prunable_head_dims: whether dimensions inside each head may be removed.
    :param round_to: keep a multiple of this many output channels of ``module`` (the nearest to the
        asked ratio), for a width a config requires to be divisible (hidden size by heads).
    """

    module: Any
    num_heads: Optional[int] = None
    head_dim: Optional[int] = None
    out_channel_groups: Optional[int] = None
    in_channel_groups: Optional[int] = None
    keep: bool = False
    prunable_heads: Optional[bool] = None
    prunable_head_dims: Optional[bool] = None
    round_to: Optional[int] = None
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for field in ("num_heads", "head_dim", "out_channel_groups", "in_channel_groups", "round_to"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PluginError(f"StructureHint.{field} must be a positive int, got {value!r}")


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise PluginError(f"{kind} name must be a non-empty identifier-like string, got {name!r}")


@dataclasses.dataclass(frozen=True)
class ModelScheme(_Stamped):
    """A model-spec scheme and how to build its models, for ``pruning-core prune SPEC``.

    :param scheme: the prefix before the colon, for example ``"timm"``.
    :param example: a full example spec, for example ``"timm:convnext_tiny"``.
    :param description: one line.
    :param resolve: ``resolve(spec)`` returns a :class:`ModelSource` for a spec of this
        scheme (the whole spec, prefix included), or raises
        :class:`pruning_core.ConfigurationError` saying what is wrong with it.
    :param prefixed: ``False`` for a scheme whose specs carry no prefix (a saved
        directory): its ``resolve`` is tried, in turn with the other unprefixed
        schemes, for specs with no known prefix, and returns ``None`` to pass.
    :param stream: optional ``stream(spec, output, **options) -> dict`` for ``prune --low-memory``:
        prunes the checkpoint without loading it whole and returns a JSON-friendly report
        (options: ratio, importance, compensation, calibration, global_pruning, ignored_layers...).
    """

    scheme: str
    example: str
    description: str = ""
    resolve: Optional[Callable[[str], Any]] = None
    prefixed: bool = True
    stream: Optional[Callable[..., Dict[str, Any]]] = None
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("ModelScheme", self.scheme)
        if not callable(self.resolve):
            raise PluginError(f"ModelScheme {self.scheme!r}: resolve must be a callable resolve(spec) -> "
                              "ModelSource (since 0.2 the scheme record builds the model; the "
                              "resolve_model_spec hook is gone)")
        if not isinstance(self.example, str) or (self.prefixed and not self.example.startswith(self.scheme + ":")):
            raise PluginError(f"ModelScheme {self.scheme!r}: example {self.example!r} must be a spec that starts "
                              f"with '{self.scheme}:'")


@dataclasses.dataclass(frozen=True)
class StateCodec(_Stamped):
    """State outside modules (a framework config object, say) saved with a pruned model and restored on load.

    :param name: the key the state is stored under in the saved file. Files saved
        by pruning_core 0.1 stored it under the plugin's entry-point name, so a
        codec named like its plugin (``"hf"``) loads them too.
    :param collect: ``collect(model)`` returns plain data (dicts, lists, strings,
        numbers) to save, or ``None`` when the model has nothing for this codec.
    :param restore: ``restore(model, state)`` applies what ``collect`` returned, on a
        freshly built model whose pruned structure was just rebuilt.
    """

    name: str
    collect: Callable[[Any], Any]
    restore: Callable[[Any, Any], None]
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("StateCodec", self.name)
        for field in ("collect", "restore"):
            if not callable(getattr(self, field)):
                raise PluginError(f"StateCodec {self.name!r}: {field} is not callable")


@dataclasses.dataclass
class ModelSource:
    """A model built from a spec, with what the command line needs to prune it.
    :param model: the model (random or loaded weights).
    :param example_inputs: inputs for tracing and measuring.
    :param spec: the spec that built it, saved with the pruned model so it can be rebuilt.
    :param keep: modules whose output channels must stay (classifier, LM head).
    :param forward_fn: how to call the model, when ``model(inputs)`` is not enough.
    :param make_batch: ``make_batch(i)`` returns calibration batch ``i`` (defaults to random inputs).
    :param description: one line shown by the command line (``"timm convnext_tiny (random weights)"``).
    :param encode_text: ``encode_text(lines)``: strings to one batch like ``example_inputs`` (``--calib a.txt``).
    """

    model: Any
    example_inputs: Any
    spec: str
    keep: Tuple[Any, ...] = ()
    forward_fn: Optional[Callable[..., Any]] = None
    make_batch: Optional[Callable[[int], Any]] = None
    description: str = ""
    encode_text: Optional[Callable[[List[str]], Any]] = None


@dataclasses.dataclass(frozen=True)
class BlockStack(StructureHint):
    """A structure hint: ``module``'s children are repeated blocks run in order (a decoder's ``layers``,
    timm's ``blocks``); sequential calibration prunes them one by one, each calibrated on the
    outputs of the already pruned blocks before it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        children = getattr(self.module, "children", None)
        if not callable(children) or len(list(children())) < 2:
            raise PluginError("BlockStack.module must be a module with at least two children (the blocks), "
                              f"got {type(self.module).__name__}")


@dataclasses.dataclass(frozen=True)
class SizeAttribute(_Stamped):
    """Int attributes of ``module`` that size reshapes, splits or new tensors in its forward.
    Return it from ``collect_structure_hints``. While tracing each is followed like ``x.shape[1]``:
    the first shape it sizes is what it measures, and the core sets it to that's new size after
    every pruning (``torch.split(x, [self.dim_conv, self.dim_untouched])``). One that sizes no shape
    follows the dims of the module's own weights of its size, while they agree on one new size.

    :param module: the module holding the attributes.
    :param attributes: names of sizes (a split part, a channel dim, a head size): ints, or lists of ints (split sizes).
    :param counts: names of counts (``n_heads``): followed and kept up to date like sizes, but a
        count is only pruned when asked (head pruning), as a head count written in code is.
    """

    module: Any
    attributes: Union[str, Tuple[str, ...]]
    counts: Union[str, Tuple[str, ...]] = ()
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for field in ("attributes", "counts"):
            value = getattr(self, field)
            object.__setattr__(self, field, (value,) if isinstance(value, str) else tuple(value))  # tuples
        for name in self.attributes + self.counts:
            value = getattr(self.module, name, None)
            if not all(type(v) is int for v in (value if isinstance(value, (list, tuple)) and value else [value])):
                raise PluginError(f"SizeAttribute for {type(self.module).__name__}: {name!r} must be an int attribute "
                                  f"of the module (or a list or tuple of ints: split sizes), found {value!r:.60}")


_ATTR_FIELDS = ("num_heads", "num_key_value_heads", "kv_groups", "head_dim", "width")


@dataclasses.dataclass(frozen=True)
class AttentionLayout(_Stamped):
    """Where an attention block keeps its heads, so the core keeps its attributes in step after pruning.

    Return it from ``collect_structure_hints``. The core derives each projection's heads from it
    and, after every pruning, sets the named attributes from the projections' current channels.

    :param module: the attention block.
    :param query: child name of the query projection (with ``key`` and ``value``).
    :param key: child name of the key projection; with fewer key than query heads
        (grouped-query attention) a removable head is a whole key/value group.
    :param value: child name of the value projection.
    :param fused: child name of one projection whose output holds ``parts`` equal parts (q, k, v),
        each ``heads x head_dim``; ``""``: the block itself, pruned as one layer whose outputs are heads.
    :param parts: how many equal parts the fused projection's output holds (3 for q/k/v).
    :param num_heads: attributes holding the number of (query) heads.
    :param num_key_value_heads: attributes holding the number of key/value heads.
    :param kv_groups: attributes holding query heads per key/value head.
    :param head_dim: attributes holding the size of one head.
    :param width: attributes holding ``heads x head_dim`` (``all_head_size``, ``split_size``...).
    :param scale: a float attribute scaled by ``sqrt(original head_dim / head_dim)`` (``scaling``).
    :param prunable_heads: whether whole heads may be removed (``None``: the pruner's option).
    :param prunable_head_dims: whether dims inside heads may be removed (``None``: the pruner's option).

    Each attribute field takes a name or a tuple of names; every name must exist on ``module``
    with an int value (a float for ``scale``).
    """

    module: Any
    query: Optional[str] = None
    key: Optional[str] = None
    value: Optional[str] = None
    fused: Optional[str] = None
    parts: int = 3
    num_heads: Union[str, Tuple[str, ...]] = ()
    num_key_value_heads: Union[str, Tuple[str, ...]] = ()
    kv_groups: Union[str, Tuple[str, ...]] = ()
    head_dim: Union[str, Tuple[str, ...]] = ()
    width: Union[str, Tuple[str, ...]] = ()
    scale: Optional[str] = None
    prunable_heads: Optional[bool] = None
    prunable_head_dims: Optional[bool] = None
    provider: Optional[Provider] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"AttentionLayout for {type(self.module).__name__}"
        if not callable(getattr(self.module, "get_submodule", None)):
            raise PluginError(f"{where}: module must be the attention block (a torch module)")
        separate = (self.query, self.key, self.value)
        if self.fused is not None and any(n is not None for n in separate):
            raise PluginError(f"{where}: give either query, key and value or fused, not both")
        if self.fused is None and not all(isinstance(n, str) and n for n in separate):
            raise PluginError(f"{where}: give the child names of all of query, key and value, or fused")
        for name in (separate if self.fused is None else (self.fused,)):
            if not isinstance(name, str) or (name and not _has_child(self.module, name)):
                raise PluginError(f"{where}: it has no child module {name!r}")
        if not isinstance(self.parts, int) or isinstance(self.parts, bool) or self.parts < 1:
            raise PluginError(f"{where}: parts must be a positive int, got {self.parts!r}")
        for field in _ATTR_FIELDS:
            names = getattr(self, field)
            names = (names,) if isinstance(names, str) else tuple(names)
            object.__setattr__(self, field, names)
            for name in names:
                value = getattr(self.module, name, None) if isinstance(name, str) else None
                if not isinstance(value, int) or isinstance(value, bool):
                    raise PluginError(f"{where}: {field} names attribute {name!r}, which the block does not have "
                                      f"as an int (it is {type(value).__name__})")
        if self.fused is None and not self.head_dim:
            raise PluginError(f"{where}: separate projections need the head_dim attribute(s)")
        if self.fused is not None and not (self.head_dim or self.num_heads):
            raise PluginError(f"{where}: a fused projection needs num_heads or head_dim attribute(s)")
        if self.scale is not None and not isinstance(getattr(self.module, self.scale, None), float):
            raise PluginError(f"{where}: scale names {self.scale!r}, which the block does not have as a float")
        for field in ("prunable_heads", "prunable_head_dims"):
            if getattr(self, field) not in (None, True, False):
                raise PluginError(f"{where}: {field} must be None, True or False")

    def projections(self) -> Tuple[str, ...]:
        """Child names of the projections that hold heads (``("",)`` for the block itself)."""
        return (self.fused,) if self.fused is not None else (self.query, self.key, self.value)


def _has_child(module: Any, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True
