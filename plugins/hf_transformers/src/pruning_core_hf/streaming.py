"""Prune a transformers checkpoint larger than memory: plan on meta, stream the weights block by block.

:func:`prune_checkpoint` builds the model from ``config.json`` on the meta device,
plans the groups there, then loads one decoder block at a time from the
safetensors shards, scores it on the calibration inputs produced by the pruned
blocks before it, prunes and repairs it, writes it as its own shard and frees it
(``pruning_core.calibration.streaming``). The output appears under ``dst`` only
when complete: it is written to ``dst + ".partial"`` (with a marker file saying
so) and renamed at the end.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pruning_core import ConfigurationError, SerializationError, UnsupportedModelError

from .checkpoint import (DTYPES, INDEX, CheckpointReader, CheckpointStore, ShardWriter, copy_side_files, default_dtype,
                         pack, parameters_on_meta)
from . import resume
from .io import PLUGIN, RECORD, STOCK, SavedModel

MARKER = "PRUNING_INCOMPLETE.txt"
PARTIAL = ".partial"
logger = logging.getLogger("pruning_core_hf")



class StreamedModel(SavedModel):
    """The directory :func:`prune_checkpoint` wrote, with what the run measured.

    ``peak_rss`` is the process's peak resident memory in bytes (the whole process,
    imports included), ``input_bytes``/``output_bytes`` the tensor data read and written,
    ``params_before``/``params_after`` the numbers stored before and after.
    """

    peak_rss: int
    input_bytes: int
    output_bytes: int
    params_before: int
    params_after: int
    blocks: int


def _model_class(config: Any) -> Any:
    import transformers

    names = getattr(config, "architectures", None) or []
    found = getattr(transformers, names[0], None) if names else None
    if found is None:
        raise ConfigurationError(f"config.json names no transformers architecture ({names}); streaming needs "
                                 "'architectures', e.g. ['LlamaForCausalLM']")
    return found


def _checkpoint_dtype(reader: CheckpointReader) -> torch.dtype:
    counts: Dict[str, int] = {}
    for name, dtype in reader.dtypes.items():
        if dtype in DTYPES:
            counts[dtype] = counts.get(dtype, 0) + 1
    return DTYPES[max(counts, key=counts.get)] if counts else torch.float32


def _match_keys(model: nn.Module, reader: CheckpointReader) -> Dict[str, str]:
    """Model state-dict name -> checkpoint name; errors name what is missing or shaped differently."""
    prefix = getattr(model, "base_model_prefix", "")
    state = model.state_dict(keep_vars=True)
    owners: Dict[int, str] = {}
    key_of: Dict[str, str] = {}
    missing: List[str] = []
    for name, tensor in state.items():
        candidates = [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1:])
        elif prefix:
            candidates.append(f"{prefix}.{name}")
        key = next((c for c in candidates if c in reader), None)
        if key is None:
            if id(tensor) in owners:  # a tied tensor (lm_head sharing the embeddings): stored once
                continue
            missing.append(name)
            continue
        owners.setdefault(id(tensor), name)
        if tuple(tensor.shape) != reader.shapes[key]:
            raise SerializationError(
                f"{reader.directory}: config.json gives {name} the shape {list(tensor.shape)}, but the checkpoint "
                f"holds {list(reader.shapes[key])} in {reader.files[key]}; the config and the weights disagree")
        key_of[name] = key
    tied = {name for name, tensor in state.items() if name not in key_of and id(tensor) in owners}
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = [m for m in missing if m not in tied and m in params]  # buffers absent from a checkpoint are rebuilt
    if missing:
        used = set(key_of.values())
        leftover = [n for n in reader.names() if n not in used]
        hint = "config.json describes tensors the weights do not have"
        if leftover:  # transformers renames or fuses some tensors when it loads (per-expert weights, ...)
            hint = (f"the checkpoint holds {len(leftover)} tensor(s) under other names (such as {leftover[0]}) "
                    "that transformers converts while loading; streaming reads tensors by the model's own names "
                    "and cannot convert them: prune this model in memory")
        raise SerializationError(f"{reader.directory}: the checkpoint has no tensor for {missing[0]}"
                                 f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {hint}")
    return key_of


def _prepare(dst: str, overwrite: bool, print_: Optional[str]) -> Tuple[str, Optional[Dict[str, Any]]]:
    """The work directory ``dst + '.partial'`` and, when an interrupted run with the same inputs and
    options left one, its progress (to resume); other leftovers are removed (start over)."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise ConfigurationError(f"{dst} already exists; choose a new directory or pass overwrite=True")
    work = dst + PARTIAL
    if os.path.exists(work):
        if not os.path.isfile(os.path.join(work, MARKER)):
            raise ConfigurationError(f"{work} exists and was not written by prune_checkpoint; move it away")
        state = resume.read(work, print_)
        if state is not None:
            logger.warning("%s: resuming an interrupted run after its block %d", work, state["done"])
            return work, state
        logger.warning("%s: removing an interrupted run's files (other inputs or options) and starting again", work)
        shutil.rmtree(work)
    os.makedirs(work)
    with open(os.path.join(work, MARKER), "w") as handle:
        handle.write("pruning_core_hf.prune_checkpoint is writing this directory (or was stopped while it did).\n"
                     f"It is not a model. The finished model appears as {dst}; rerun the same call to resume.\n")
    return work, None


def _move_into_place(work: str, final: str) -> None:
    """Rename the finished directory to ``final``; an existing one is set aside first, deleted last."""
    old = final + ".replaced"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(work, final)
    shutil.rmtree(old, ignore_errors=True)


def _meta_inputs(model: nn.Module, dtype: torch.dtype, forward: Any, tokens: int = 8) -> Dict[str, torch.Tensor]:
    """Example inputs the model runs on the meta device, found by trying the forms transformers takes.

    A 4-D float mask first: building a mask from a 2-D one calls ``.item()``, which meta tensors
    cannot do; models that derive positions from the mask (OPT) also get ``position_ids``.
    """
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    mask = torch.zeros(1, 1, tokens, tokens, dtype=dtype, device="meta")
    accepted = inspect.signature(model.forward).parameters
    candidates = [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids}]
    if "position_ids" in accepted:
        candidates.insert(1, {"input_ids": ids, "attention_mask": mask,
                              "position_ids": torch.arange(tokens, device="meta")[None]})
    failures = []
    for inputs in candidates:
        try:
            with torch.no_grad():
                forward(model, inputs)
            return inputs
        except Exception as exc:  # the next form, then a clear error with every reason
            failures.append(f"{'+'.join(inputs)}: {type(exc).__name__}: {str(exc)[:120]}")
    raise UnsupportedModelError(f"{type(model).__name__} does not run on the meta device with token inputs "
                                f"({'; '.join(failures)}), so it cannot be planned without its weights")


def forward_without_cache(model: nn.Module) -> Any:
    """The model called as a plain forward with the KV cache off (the calibration and reference forward)."""
    from pruning_core.calling import call_model

    cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(module: nn.Module, batch: Any) -> Any:
        if cache and isinstance(batch, dict):
            batch = {**batch, "use_cache": False}
        elif cache and isinstance(batch, torch.Tensor):
            batch = {"input_ids": batch, "use_cache": False}
        return call_model(module, batch)
    return forward


def _batches(calibration: Any, directory: str, batch_size: int, max_length: int) -> Optional[List[Any]]:
    """Calibration batches from batches, a tensor of token ids (one row per sequence) or a list of texts."""
    if calibration is None:
        return None
    if isinstance(calibration, int) and not isinstance(calibration, bool):
        if calibration < 1:
            raise ConfigurationError(f"calibration={calibration}: give at least one sequence")
        import transformers

        vocab = getattr(transformers.AutoConfig.from_pretrained(directory), "vocab_size", None) or 1000
        ids = torch.randint(0, vocab, (calibration, max_length), generator=torch.Generator().manual_seed(0))
        return list(ids.split(batch_size))  # random tokens: enough to try; real text scores better
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2 or calibration.is_floating_point():
            raise ConfigurationError(f"calibration tensor must hold token ids, one sequence per row; got shape "
                                     f"{list(calibration.shape)} ({calibration.dtype})")
        return list(calibration.split(batch_size))
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(t, str) for t in calibration):
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        except Exception as exc:
            raise ConfigurationError(f"calibration texts need a tokenizer, but {directory} has none that loads "
                                     f"({type(exc).__name__}); pass token ids instead") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        texts = list(calibration)
        return [dict(tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                               max_length=max_length)) for i in range(0, len(texts), batch_size)]
    from pruning_core.calibration.batches import reiterable

    return list(reiterable(calibration))


def prune_checkpoint(src: str, dst: str, ratio: float = 0.3, importance: Any = "wanda",
                     compensation: Optional[str] = None, calibration: Any = None, *, heads: bool = True,
                     head_ratio: Optional[float] = None, global_pruning: bool = False,
                     max_memory: Union[int, str] = "4GB", max_shard_size: Union[int, str] = "2GB", batch_size: int = 8, max_length: int = 128,
                     ignored_layers: Sequence[str] = (), overwrite: bool = False, progress: bool = True,
                     **pruner_kwargs: Any) -> StreamedModel:
    """Prune the safetensors checkpoint in directory ``src`` into ``dst``, one decoder block in memory at a time.

    :param ratio: fraction of the feed-forward width removed from every block (``pruning_ratio``).
    :param importance: a criterion name or object; the calibrated ones (``"wanda"``, ``"flap"``,
        ``"obs"``) score each block on the inputs the pruned blocks before it produce.
    :param compensation: ``"bias"`` or ``"lstsq"`` to repair each block's outputs (needs calibration).
    :param calibration: batches (dicts of ``input_ids``/``attention_mask``), a tensor of token ids
        (one row per sequence), a list of texts (tokenized with ``src``'s tokenizer), or a number
        of random sequences of ``max_length`` tokens (for trying it out; real text scores better).
    :param heads: also remove whole attention heads, at ``head_ratio`` (default: ``ratio``).
    :param global_pruning: rank channels across blocks (two streaming passes: score, then prune).
    :param max_memory: calibration hidden states held in memory before they go to disk.
    :param max_shard_size: the tensors outside the blocks (embeddings, head) go in shards of at most
        this size, each read and written on its own; every block is a shard of its own.
    :param ignored_layers: qualified names of more modules whose outputs are kept.
    :param overwrite: replace an existing ``dst`` (only once the new one is complete).

    The hidden (residual) width, the embeddings, the final norm and the output head
    are kept: they span every block. Returns ``dst`` as a :class:`StreamedModel`;
    its ``form`` is ``"stock"`` when ``AutoModel...from_pretrained`` loads it (every
    block the same shape) and ``"pruning_core_hf"`` otherwise (load with
    :func:`pruning_core_hf.from_pretrained`).
    """
    import transformers

    from pruning_core.calibration.sequential import find_blocks
    from pruning_core.calibration.streaming import StreamingPrune, parse_bytes, peak_rss
    from pruning_core.calling import call_model
    from pruning_core.pruner import BasePruner

    from .express import build

    budget = parse_bytes(max_memory)
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ConfigurationError(f"{src}: no config.json; give a transformers checkpoint directory")
    reader = CheckpointReader(src)
    config = transformers.AutoConfig.from_pretrained(src)
    model_class = _model_class(config)
    dtype = _checkpoint_dtype(reader)
    with default_dtype(dtype):
        model = build(model_class, config).eval()
        key_of = _match_keys(model, reader)
        with parameters_on_meta(), torch.device("cpu"):
            donor = model_class(copy.deepcopy(config))
    buffers = {name: tensor for name, tensor in donor.named_buffers() if not tensor.is_meta}
    del donor
    blocks = find_blocks(model)
    inside = {id(m) for block in blocks for m in block.modules()}
    named = dict(model.named_modules())
    unknown = [n for n in ignored_layers if n not in named]
    if unknown:
        raise ConfigurationError(f"ignored_layers: {model_class.__name__} has no module {unknown[0]!r}")
    ignored = [m for m in model.modules() if id(m) not in inside and not list(m.children())]
    ignored += [named[n] for n in ignored_layers]
    batches = _batches(calibration, src, batch_size, max_length)
    forward = forward_without_cache(model)
    inputs = _meta_inputs(model, dtype, forward)
    pruner = BasePruner(model, inputs, importance=importance, pruning_ratio=ratio, global_pruning=global_pruning,
                        prune_num_heads=heads, head_pruning_ratio=ratio if head_ratio is None else head_ratio,
                        ignored_layers=ignored, calibration=batches, compensation=compensation, forward_fn=forward,
                        **pruner_kwargs)
    block_names = tuple(n + "." for n, m in model.named_modules() if id(m) in {id(b) for b in blocks})
    outside = {name: key for name, key in key_of.items() if not name.startswith(block_names)}
    outside_shards = pack(outside, reader, parse_bytes(max_shard_size))
    final = os.path.abspath(dst)
    store = CheckpointStore(model, reader, ShardWriter(final + PARTIAL, len(blocks) + len(outside_shards)), buffers,
                            key_of)
    streaming = StreamingPrune(pruner, store, forward, budget, final + PARTIAL,
                               run_meta=lambda: call_model(model, inputs, forward))  # checks the chain of blocks
    options = dict(ratio=ratio, importance=importance, compensation=compensation, heads=heads, head_ratio=head_ratio,
                   global_pruning=global_pruning, ignored_layers=list(ignored_layers), batch_size=batch_size,
                   max_length=max_length, **pruner_kwargs)
    print_ = None if streaming.two_passes else resume.fingerprint(src, options, batches)
    work, state = _prepare(dst, overwrite, print_)
    start, hidden = 0, None
    if state is not None:
        pruner.DG.replay(state["history"])  # the written blocks' pruning, on the skeleton
        start = state["done"]
        store.writer.adopt(resume.restore_blocks(model, work, [store.writer.filename(i + 1) for i in range(start)]))
        hidden = resume.hidden_states(work, state) if batches is not None else None

    def record(index: int) -> None:  # after each block: what a rerun needs to resume here
        if print_ is not None:
            resume.write(work, print_, index + 1, pruner.DG.pruning_history(), streaming.hidden_states())

    try:
        streaming.run(progress, start=start, hidden=hidden, on_block=record)
        writer = store.writer
        for number, names in enumerate(outside_shards, len(blocks) + 1):  # embeddings, final norm, head as they are
            writer.copy(number, reader, {n: outside[n] for n in names})
        writer.write_index()
        resume.clean(work)
        shutil.rmtree(os.path.join(work, "hidden"), ignore_errors=True)
        form, reason = _write_config(model, work)
        copy_side_files(src, work, (RECORD, MARKER))
        os.remove(os.path.join(work, MARKER))
    except BaseException:
        if not os.path.isfile(os.path.join(work, resume.PROGRESS)):
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: nothing half-written stays behind
        raise
    _move_into_place(work, final)
    result = StreamedModel(final, form, reason)
    result.peak_rss = max(streaming.peak, peak_rss())
    result.input_bytes, result.output_bytes = reader.size(), store.writer.total
    result.params_before, result.params_after, result.blocks = reader.parameters(), store.writer.params, len(blocks)
    logger.info("%s: pruned %d blocks, %s form, peak RSS %.2f GiB", final, len(blocks), form, result.peak_rss / 2 ** 30)
    return result


def stream_spec(spec: str, output: str, **options: Any) -> Dict[str, Any]:
    """``pruning-core prune hf:DIR --low-memory``: :func:`prune_checkpoint` and a report for the command line."""
    directory = spec.partition(":")[2]
    if not os.path.isdir(directory):
        raise ConfigurationError(f"{spec}: give a local checkpoint directory (models are never downloaded)")
    options = {k: v for k, v in options.items() if v is not None or k == "calibration"}
    result = prune_checkpoint(directory, output, **options)
    how = ("AutoModel...from_pretrained (stock transformers)" if result.form == STOCK
           else "pruning_core_hf.from_pretrained")
    return {"output": str(result), "form": result.form, "load_with": how, "reason": result.reason or None,
            "blocks": result.blocks, "params_before": result.params_before, "params_after": result.params_after,
            "bytes_read": result.input_bytes, "bytes_written": result.output_bytes,
            "peak_rss_gib": round(result.peak_rss / 2 ** 30, 2)}


def _write_config(model: nn.Module, work: str) -> Any:
    """config.json in the stock form when it describes the pruned shapes, else the plugin's record."""
    import json

    from pruning_core.serialization import encode, structure_of

    from .config import FULL_ORIGINAL, saved_state
    from .express import express

    original = model.__dict__.get(FULL_ORIGINAL)
    candidate, reason = (model.config, "") if original is None else express(model, model.config, original)
    if candidate is not None:
        candidate = copy.deepcopy(candidate)
        candidate.pruning_core = {"uniform": True}
        try:
            candidate.save_pretrained(work)
            return STOCK, ""
        except Exception as exc:  # transformers' validation at save time
            reason = f"transformers refuses to save the config ({type(exc).__name__}: {str(exc)[:200]})"
    config = copy.deepcopy(original)
    config.architectures = [type(model).__name__]
    config.pruning_core = {"uniform": False, "reason": reason}
    config.save_pretrained(work)
    with open(os.path.join(work, RECORD), "w") as handle:
        json.dump({"format": "pruning_core.hf/1", "structure": structure_of(model), "weights": INDEX,
                   "config": encode(saved_state(model) or {}), "reason": reason}, handle, indent=1)
    return PLUGIN, reason


__all__ = ["prune_checkpoint", "StreamedModel", "MARKER", "stream_spec"]
