"""Size attributes of modules that hold raw weights (routers, fused experts), declared so they follow pruning.

Layers with a handler (``nn.Linear``, ``Conv1D``...) keep their own size attributes. A
transformers module that holds raw parameters and sizes a shape with an int attribute (a
router's ``hidden_dim`` in ``hidden_states.reshape(-1, self.hidden_dim)``) gets a
:class:`~pruning_core.SizeAttribute` record for each int attribute equal to a dimension of its
own parameters: the tracer then follows the attribute like ``x.shape[-1]``, and the core sets it
after pruning. One the forward never sizes a shape with follows the weight dims of its size while they agree
(a fused experts block's ``intermediate_dim``).
"""

from __future__ import annotations

from typing import List

from torch import nn

from pruning_core import SizeAttribute


def raw_weight_sizes(model: nn.Module) -> List[SizeAttribute]:
    """One record per module (outside ``torch.nn``) whose int attributes equal a dimension of its own weights."""
    records = []
    for module in model.modules():
        if type(module).__module__.startswith("torch.nn"):
            continue
        weights = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        dims = {n for tensor in weights for n in tensor.shape}
        names = tuple(attr for attr, value in vars(module).items()
                      if not attr.startswith("_") and type(value) is int and value > 1 and value in dims)
        if names:
            records.append(SizeAttribute(module, names))
    return records
