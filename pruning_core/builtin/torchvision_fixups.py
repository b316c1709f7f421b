"""Size attributes of torchvision models (plain torch ops, so they live in the core).

Matched by class path, so torchvision is never imported here. Each attribute named below
is followed while tracing and set by the core after pruning (:class:`pruning_core.SizeAttribute`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..hookspecs import hookimpl
from ..records import SizeAttribute

# class path -> attributes that size a reshape or split in its forward (sizes, then counts of heads)
SIZE_COUNTS: Dict[str, Tuple[str, ...]] = {
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": ("n_heads",),
}
SIZE_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "torchvision.models.vision_transformer.VisionTransformer": ("hidden_dim",),  # reshape of the patches
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": ("head_dim",),  # q/k/v reshapes
    # RAFT: split(context, [hidden_state_size, context.shape[1] - hidden_state_size])
    "torchvision.models.optical_flow.raft.UpdateBlock": ("hidden_state_size",),
}


def _class_path(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@hookimpl
def collect_structure_hints(model: Any) -> List[SizeAttribute]:
    """The size attributes of torchvision blocks in ``model``."""
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return []
    records = []
    for module in modules():
        names = SIZE_ATTRIBUTES.get(_class_path(module))
        if names and all(isinstance(getattr(module, n, None), int) for n in names):
            records.append(SizeAttribute(module, names, counts=SIZE_COUNTS.get(_class_path(module), ())))
    return records
