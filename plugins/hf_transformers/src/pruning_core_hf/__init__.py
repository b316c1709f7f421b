"""pruning_core plugin for Hugging Face transformers. Imports transformers only when used."""

__version__ = "0.1.0"
