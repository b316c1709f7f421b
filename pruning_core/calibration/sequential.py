"""Sequential calibration: prune a stack of blocks one block at a time, as SparseGPT and Wanda do.

Block ``i`` is calibrated on the inputs produced by blocks ``0..i-1`` already
pruned and compensated, so each block's repair also absorbs the error of those
before it. Only one block's statistics are held at a time.

Each pass runs the model from its start and stops right after block ``i``, so it
is exact for any model whatever runs between the blocks (embeddings, masks,
position tables, caches), at the cost of re-running the earlier blocks.

Some choices cannot be made block by block; they are made first, from one full
pass over the model as it is at the start of the step:

* groups with members outside every block or in several blocks (the residual
  width of a transformer, a stem) are ranked, compensated and pruned first;
* groups ranked together across blocks (``global_pruning``, a tuple in
  ``pruning_ratio_dict`` spanning blocks) are ranked from that full pass too;
  their block-local members are still compensated block by block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Optional, Tuple

from torch import nn

from ..pruner.planning import group_for, plan_step

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Calibrator


def find_blocks(model: nn.Module, generic: bool = False) -> List[nn.Module]:
    """The blocks a plugin names (a ``BlockStack`` hint), in the order they are registered.

    With ``generic``, a model no plugin describes uses its longest list of
    same-class modules (``nn.ModuleList`` or ``nn.Sequential``).
    """
    from .._plugins import get_hub
    from ..records import BlockStack

    blocks: List[nn.Module] = []
    for hint in get_hub().structure_hints(model):
        if isinstance(hint, BlockStack):
            blocks.extend(m for m in hint.module.children() if all(m is not b for b in blocks))
    if not blocks and generic:
        best: Optional[nn.Module] = None
        for module in model.modules():
            children = list(module.children())
            if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(children) > 1 \
                    and len({type(c) for c in children}) == 1 and (best is None or len(children) > len(list(
                        best.children()))):
                best = module
        blocks = list(best.children()) if best is not None else []
    order = {id(m): index for index, m in enumerate(model.modules())}
    return sorted(blocks, key=lambda m: order.get(id(m), 0))


class SequentialWalk:
    """One pruning step, done block by block."""

    def __init__(self, calibrator: "Calibrator", blocks: List[nn.Module]) -> None:
        self.calibrator = calibrator
        self.pruner = calibrator.pruner
        self.blocks = blocks
        self._members = [{id(m) for m in block.modules()} for block in blocks]

    def home(self, planned: Any) -> Optional[int]:
        """The block holding every member of the group, or None."""
        owners = {id(item.dep.slot.target.owner) for item in self.pruner.full_group(planned)}
        for index, members in enumerate(self._members):
            if owners <= members:
                return index
        return None

    def run(self) -> List[Tuple[Any, List[int]]]:
        pruner, options = self.pruner, self.pruner.options
        groups = [g for g in pruner.groups if g.current > 0]
        homes = {id(g): self.home(g) for g in groups}
        scopes: Dict[Hashable, List[Any]] = {}
        for group in groups:
            scopes.setdefault(group.scope, []).append(group)
        deferred: Dict[int, List[Any]] = {}
        upfront: List[Any] = []
        for members in scopes.values():
            places = {homes[id(g)] for g in members}
            if len(places) == 1 and None not in places:
                deferred.setdefault(places.pop(), []).extend(members)
            else:
                upfront.extend(members)
        done: List[Tuple[Any, List[int]]] = []
        fixed: Dict[int, List[Tuple[Any, List[int]]]] = {}
        if upfront:
            self.calibrator.collect(upfront, "calibration")
            for planned, idxs in plan_step(upfront, pruner.current_step, options, pruner.estimate_importance):
                if not idxs:
                    continue
                if homes[id(planned)] is None:
                    self._prune(planned, idxs)
                    done.append((planned, idxs))
                else:
                    fixed.setdefault(homes[id(planned)], []).append((planned, idxs))
        for index, block in enumerate(self.blocks):
            ranked, chosen = deferred.get(index, []), fixed.get(index, [])
            if not ranked and not chosen:
                continue
            self.calibrator.collect(ranked + [planned for planned, _ in chosen],
                                    f"block {index + 1}/{len(self.blocks)}", stop_after=block)
            plan = chosen + [(planned, idxs) for planned, idxs in
                             plan_step(ranked, pruner.current_step, options, pruner.estimate_importance) if idxs]
            for planned, idxs in plan:
                self._prune(planned, idxs)
            done.extend(plan)
        self.calibrator._use(None)  # one block's statistics at a time: none are kept after the step
        return done

    def _prune(self, planned: Any, idxs: List[int]) -> None:
        group = group_for(self.pruner.DG, planned, idxs)
        self.calibrator.compensate(group)
        group.prune()


__all__ = ["find_blocks", "SequentialWalk"]
