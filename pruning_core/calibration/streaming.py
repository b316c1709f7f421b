"""Streaming: prune a chain of blocks whose weights stay in storage, one block in memory at a time.

The model is a skeleton on the meta device and the pruner plans on it as usual. A
:class:`BlockStore` (a checkpoint reader and writer; the hf plugin has one for
safetensors) puts one block's real tensors in place, writes the block once it is
pruned and takes its tensors back; it does the same for what runs before the
first block (the embeddings).

Calibration follows the chain: every batch's call of every block is captured once
(the model runs with each block replaced by a stand-in that records the call and
passes its input on), then block ``i`` runs on the outputs of the pruned blocks
before it, kept in a :class:`HiddenCache` that moves to disk past a memory budget.
That is what sequential calibration does in memory (``sequential.py``), with one
pass over the blocks instead of one per block, so the results are the same.

Groups ranked across blocks (``global_pruning``, a tuple in ``pruning_ratio_dict``)
need two passes: one scores every block on the unpruned chain, one prunes with the
channels chosen from all the scores and compensates on the pruned chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigurationError, PruneFailedError, UnsupportedModelError
from ..pruner.planning import group_for, plan_step
from ..utils.progress import Phase
from .batches import StopForward, evaluating
from .sequential import SequentialWalk, find_blocks
from .storage import HiddenCache, parse_bytes, peak_rss

if TYPE_CHECKING:  # pragma: no cover
    from ..pruner.base import BasePruner

Slot = Union[int, str]  # where a block call holds its hidden input: a position or a keyword


class BlockStore(Protocol):
    """Where the tensors of a streamed model live: loads them into the skeleton and writes the result."""

    def load_prefix(self, modules: List[nn.Module]) -> None:
        """Put real tensors into ``modules``, which run before the first block (embeddings, ...)."""

    def release_prefix(self, modules: List[nn.Module]) -> None:
        """Put ``modules`` back on the meta device."""

    def load(self, index: int, block: nn.Module) -> None:
        """Put the real tensors of block ``index`` in place."""

    def save(self, index: int, block: nn.Module) -> None:
        """Write block ``index`` as it is now (pruned)."""

    def release(self, index: int, block: nn.Module) -> None:
        """Put block ``index`` back on the meta device, keeping its (pruned) shapes."""


@dataclass
class Chain:
    """How the blocks pass the hidden state on: where a call holds it, and what a block returns."""

    slot: Slot
    tuple_length: Optional[int]  # None: a block returns the tensor; n: a tuple of n with the tensor first
    prefix: List[nn.Module]  # modules outside the blocks that run before the first one


def _hidden_of(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) and output else output


def _find_slot(args: Tuple, kwargs: Dict[str, Any], value: Any) -> Optional[Slot]:
    for position, arg in enumerate(args):
        if arg is value:
            return position
    for key, arg in kwargs.items():
        if arg is value:
            return key
    return None


def find_chain(model: nn.Module, blocks: List[nn.Module], run: Callable[[], Any]) -> Chain:
    """Check, with one (meta) forward ``run()``, that each block takes the previous one's output.

    Raises :class:`UnsupportedModelError` when the blocks do not form such a chain
    (something runs between them, or one runs twice), since they cannot then be
    streamed one after the other.
    """
    calls: List[List[Tuple[Tuple, Dict, Any]]] = [[] for _ in blocks]
    order: List[nn.Module] = []
    inside = {id(m) for block in blocks for m in block.modules()}
    started = [False]

    def record(index: int) -> Callable:
        def hook(module: nn.Module, args: Tuple, kwargs: Dict, output: Any) -> None:
            calls[index].append((args, kwargs, output))
        return hook

    def note(module: nn.Module, args: Tuple) -> None:
        if module is blocks[0]:
            started[0] = True
        elif not started[0] and id(module) not in inside and module is not model:
            order.append(module)

    handles = [block.register_forward_hook(record(i), with_kwargs=True) for i, block in enumerate(blocks)]
    handles.append(nn.modules.module.register_module_forward_pre_hook(note))
    try:
        with evaluating(model):
            run()
    finally:
        for handle in handles:
            handle.remove()
    names = {id(m): n for n, m in model.named_modules()}
    for index, block_calls in enumerate(calls):
        if len(block_calls) != 1:
            raise UnsupportedModelError(
                f"{names.get(id(blocks[index]), index)} runs {len(block_calls)} times in one forward; streaming "
                "needs every block to run once, in order; prune this model in memory")
    outputs = [_hidden_of(c[0][2]) for c in calls]
    slots = set()
    for index in range(1, len(blocks)):
        args, kwargs, _ = calls[index][0]
        slot = _find_slot(args, kwargs, outputs[index - 1])
        if slot is None:
            raise UnsupportedModelError(
                f"{names.get(id(blocks[index]), index)} does not take the output of the block before it (something "
                "runs between them); streaming needs one chain of blocks; prune this model in memory")
        slots.add(slot)
    if len(slots) > 1:
        raise UnsupportedModelError(f"the blocks take the hidden state in different places ({sorted(map(str, slots))})")
    if slots:
        slot = slots.pop()
    else:  # one block: its first tensor argument
        args, kwargs, _ = calls[0][0]
        slot = next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor)), "hidden_states")
    first = calls[0][0][2]
    length = len(first) if isinstance(first, (tuple, list)) else None
    return Chain(slot, length, order)


def _with_slot(args: Tuple, kwargs: Dict[str, Any], slot: Slot, value: Any) -> Tuple[Tuple, Dict[str, Any]]:
    if isinstance(slot, int):
        args = args[:slot] + (value,) + args[slot + 1:]
    else:
        kwargs = dict(kwargs)
        kwargs[slot] = value
    return args, kwargs


class StreamingPrune:
    """One pruning step of ``pruner`` (built on a meta skeleton) with the weights streamed from ``store``.

    :param forward: calls the model on one calibration batch (as the pruner's ``forward_fn``);
        pass one that turns key/value caches off.
    :param max_memory: bytes of hidden states held in memory before they go to ``workdir``.
    """

    def __init__(self, pruner: "BasePruner", store: BlockStore, forward: Callable[[nn.Module, Any], Any],
                 max_memory: int, workdir: str, run_meta: Callable[[], Any]) -> None:
        self.pruner = pruner
        self.calibrator = pruner._calibrator
        self.store = store
        self.forward = forward
        self.blocks = find_blocks(pruner.model)
        if not self.blocks:
            raise UnsupportedModelError(f"no plugin names the block stack of {type(pruner.model).__name__}; "
                                        "streaming prunes one block at a time and needs it")
        self.names = {id(m): n for n, m in pruner.model.named_modules()}
        self.chain = find_chain(pruner.model, self.blocks, run_meta)
        self.cache = HiddenCache(max_memory, os.path.join(workdir, "hidden"))
        self.calls: List[List[Tuple[Tuple, Dict[str, Any]]]] = []
        self.peak = peak_rss()
        self.calibrated = self.calibrator.batches is not None  # else blocks are scored from weights alone

    # -- the chain of calls ------------------------------------------------------------------
    def capture(self) -> None:
        """Run every batch up to the blocks; record each block's call; cache the first block's inputs."""
        batches = self.calibrator.batches
        if not self.calibrated:
            return
        chain, blocks = self.chain, self.blocks
        self.calls = [[] for _ in blocks]
        self.cache.clear()
        position = [0]

        def stand_in(index: int) -> Callable:
            def call(*args: Any, **kwargs: Any) -> Any:
                hidden = args[chain.slot] if isinstance(chain.slot, int) else kwargs[chain.slot]
                if index == 0:
                    self.cache.put(position[0], hidden)
                self.calls[index].append(_with_slot(args, kwargs, chain.slot, None))
                if index == len(blocks) - 1:
                    raise StopForward()
                return hidden if chain.tuple_length is None else (hidden,) + (None,) * (chain.tuple_length - 1)
            return call

        self.store.load_prefix(chain.prefix)
        try:
            for index, block in enumerate(blocks):
                block.forward = stand_in(index)
            with evaluating(self.pruner.model):
                for batch in batches:
                    try:
                        self.forward(self.pruner.model, batch)
                    except StopForward:
                        pass
                    position[0] += 1
        finally:
            for block in blocks:
                block.__dict__.pop("forward", None)
            self.store.release_prefix(chain.prefix)
        if position[0] == 0:
            raise ConfigurationError("calibration is empty: pass at least one batch")

    def run_block(self, index: int, keep: bool) -> None:
        """Run block ``index`` on every cached input; with ``keep``, its outputs replace them."""
        block, slot = self.blocks[index], self.chain.slot
        if not self.calibrated:
            return
        with evaluating(block):
            for batch, (args, kwargs) in enumerate(self.calls[index]):
                args, kwargs = _with_slot(args, kwargs, slot, self.cache.get(batch))
                output = _hidden_of(block(*args, **kwargs))
                if keep:
                    self.cache.put(batch, output)
        self.peak = max(self.peak, peak_rss())

    # -- the step ---------------------------------------------------------------------------------
    def _plan_homes(self) -> Tuple[List[Any], Dict[int, Optional[int]], List[Any]]:
        """The groups to prune, the block each lives in, and those ranked across blocks."""
        walk = SequentialWalk(self.calibrator, self.blocks)
        groups = [g for g in self.pruner.groups if g.current > 0]
        homes = {id(g): walk.home(g) for g in groups}
        spanning = [g.root.describe() for g in groups if homes[id(g)] is None]
        if spanning:
            raise ConfigurationError(
                f"{len(spanning)} group(s) reach outside a single block ({', '.join(spanning[:3])}), so they cannot "
                "be pruned one block at a time; keep them with ignored_layers= (the modules outside the blocks)")
        scopes: Dict[Any, List[Any]] = {}
        for group in groups:
            scopes.setdefault(group.scope, []).append(group)
        shared = [g for members in scopes.values() if len({homes[id(m)] for m in members}) > 1 for g in members]
        return groups, homes, shared

    @property
    def two_passes(self) -> bool:
        """Whether some groups are ranked across blocks (a scoring pass comes first)."""
        return bool(self._plan_homes()[2])

    def run(self, progress: bool = True, start: int = 0, hidden: Optional[Iterable[torch.Tensor]] = None,
            on_block: Optional[Callable[[int], None]] = None) -> List[Tuple[Any, List[int]]]:
        """Prune every block; returns what was removed, as ``step()`` plans it.

        To resume, ``start`` skips the blocks already written (their pruning replayed on the
        skeleton by the caller) and ``hidden`` gives each batch's input to block ``start``;
        ``on_block(i)`` is called once block ``i`` is written.
        """
        pruner = self.pruner
        if pruner.options.iterative_steps != 1 or pruner.current_step != 0:
            raise ConfigurationError("streaming prunes in one step: pass iterative_steps=1 to a fresh pruner")
        groups, homes, shared = self._plan_homes()
        if start and shared:
            raise ConfigurationError("a run that ranks channels across blocks cannot resume; start it again")
        shared_ids = {id(g) for g in shared}
        ranked: Dict[int, List[Any]] = {}
        for group in groups:
            if id(group) not in shared_ids:
                ranked.setdefault(homes[id(group)], []).append(group)
        pruner.current_step += 1
        try:
            fixed: Dict[int, List[Tuple[Any, List[int]]]] = {}
            if shared:
                for planned, idxs in plan_step(shared, pruner.current_step, pruner.options, self._score_pass(
                        shared, homes, progress)):
                    if idxs:
                        fixed.setdefault(homes[id(planned)], []).append((planned, idxs))
            with pruner.DG.transaction(step=True):
                done = self._prune_pass(ranked, fixed, progress, start, hidden, on_block)
                pruner.DG.end_step()
                # Every block is back on the meta device: the whole pruned model runs there in milliseconds.
                failure = pruner.DG.verify() if pruner.options.validate else None
                if failure is not None:
                    raise PruneFailedError(f"the pruned model fails on the example inputs ({failure})")
        except BaseException:
            pruner.current_step -= 1
            raise
        finally:
            self.cache.clear()
        return done

    def hidden_states(self) -> Iterator[torch.Tensor]:
        """Each calibration batch's current hidden state (the input of the next block to run), in order."""
        for index in range(len(self.calls[0]) if self.calls else 0):
            yield self.cache.get(index)

    def _bar(self, label: str, progress: bool) -> Phase:
        bar = Phase(label, len(self.blocks), lines=progress)
        bar.bar = bar.bar and progress
        return bar

    def _note(self, bar: Phase) -> None:
        self.peak = max(self.peak, peak_rss())
        bar.note = f"peak RSS {self.peak / 2 ** 30:.2f} GiB"
        bar.advance()

    def _score_pass(self, shared: List[Any], homes: Dict[int, Optional[int]], progress: bool
                    ) -> Callable[[Any], torch.Tensor]:
        """Scores of the groups ranked across blocks, from the unpruned chain (pass 1 of 2)."""
        scores: Dict[int, torch.Tensor] = {}
        self.capture()
        with self._bar("scoring", progress) as bar:
            for index, block in enumerate(self.blocks):
                mine = [g for g in shared if homes[id(g)] == index]
                self.store.load(index, block)
                try:
                    if mine and self.calibrated:
                        self.calibrator.collect(mine, f"block {index + 1}", runner=lambda: self.run_block(index, True),
                                                root=block)
                    else:
                        self.run_block(index, True)
                    if mine:
                        scores.update({id(g): self.pruner.estimate_importance(g) for g in mine})
                finally:
                    self.calibrator._use(None)
                    self.store.release(index, block)
                self._note(bar)
        return lambda planned: scores[id(planned)]

    def _prune_pass(self, ranked: Dict[int, List[Any]], fixed: Dict[int, List[Tuple[Any, List[int]]]],
                    progress: bool, start: int, hidden: Optional[Iterable[torch.Tensor]],
                    on_block: Optional[Callable[[int], None]]) -> List[Tuple[Any, List[int]]]:
        pruner, done = self.pruner, []
        self.capture()
        if start and self.calibrated:
            count = 0
            for count, tensor in enumerate(hidden or (), 1):  # one at a time, so the cache can spill them
                self.cache.put(count - 1, tensor)
            if count != len(self.calls[0]):
                raise ConfigurationError(f"resuming at block {start} needs the hidden state of each of the "
                                         f"{len(self.calls[0])} calibration batches, not {count}")
        with self._bar("pruning", progress) as bar:
            bar.advance(start)
            for index, block in enumerate(self.blocks):
                if index < start:
                    continue
                self.store.load(index, block)
                mine, chosen = ranked.get(index, []), fixed.get(index, [])
                if (mine or chosen) and self.calibrated:
                    self.calibrator.collect(mine + [p for p, _ in chosen], f"block {index + 1}",
                                            runner=lambda: self.run_block(index, False), root=block)
                plan = chosen + [(p, idxs) for p, idxs in plan_step(mine, pruner.current_step, pruner.options,
                                                                    pruner.estimate_importance) if idxs]
                with pruner.DG.transaction():
                    for planned, idxs in plan:
                        group = group_for(pruner.DG, planned, idxs)
                        self.calibrator.compensate(group)
                        group.prune()
                    try:
                        self.run_block(index, True)
                    except Exception as exc:
                        raise PruneFailedError(
                            f"{self.names.get(id(block), index)} fails on the calibration inputs after pruning "
                            f"({type(exc).__name__}: {exc}); nothing was written for it") from exc
                self.calibrator._use(None)
                self.store.save(index, block)
                self.store.release(index, block)
                done.extend(plan)
                if on_block is not None:
                    on_block(index)
                self._note(bar)
        return done


__all__ = ["BlockStore", "Chain", "HiddenCache", "StreamingPrune", "find_chain", "parse_bytes", "peak_rss"]
