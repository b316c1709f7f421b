"""pruning_core plugin for Ultralytics YOLO. Imports ultralytics only when used."""

__version__ = "0.1.0"
