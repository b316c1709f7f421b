"""pruning_core plugin for timm. Imports timm only when used."""

__version__ = "0.1.0"
