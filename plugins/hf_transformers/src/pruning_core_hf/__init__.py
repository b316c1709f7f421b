"""pruning_core plugin for Hugging Face transformers. Imports transformers only when used.

Helpers beyond the hooks: :func:`save_pretrained` / :func:`from_pretrained` for
models whose layers were pruned differently, and :func:`prune_layers` for depth
pruning by block influence.
"""

from .depth import block_influence, layer_stack, prune_layers, remove_layers
from .io import SavedModel, from_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = ["save_pretrained", "SavedModel", "from_pretrained", "prune_layers", "remove_layers", "block_influence",
           "layer_stack"]
