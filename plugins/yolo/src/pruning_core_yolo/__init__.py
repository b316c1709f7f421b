"""pruning_core plugin for Ultralytics YOLO. Imports ultralytics only when used."""

from .training import pruned_trainer

__version__ = "0.1.0"
__all__ = ["pruned_trainer", "__version__"]
