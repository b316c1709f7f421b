"""pruning_core plugin for Hugging Face transformers. Imports transformers only when used.

Helpers beyond the hooks: :func:`save_pretrained` / :func:`from_pretrained` for
models whose layers were pruned differently, :func:`prune_layers` for depth
pruning by block influence, and :func:`prune_checkpoint` for checkpoints larger than
memory (one block loaded at a time).
"""

from .depth import block_influence, layer_stack, prune_layers, remove_layers
from .io import SavedModel, from_pretrained, save_pretrained
from .streaming import StreamedModel, prune_checkpoint

__version__ = "0.1.0"

__all__ = ["prune_checkpoint", "StreamedModel", "save_pretrained", "SavedModel", "from_pretrained", "prune_layers", "remove_layers", "block_influence",
           "layer_stack"]
