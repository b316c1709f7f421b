"""Fine-tuning a pruned model with ultralytics' own trainer.

``YOLO.train()`` builds a fresh model from the YAML config and copies over the
weights whose shapes match: with a pruned model that silently trains the
unpruned architecture. :func:`pruned_trainer` gives a trainer that trains the
model as it is.
"""

from __future__ import annotations

from typing import Any


def pruned_trainer(yolo: Any) -> type:
    """A trainer class for ``yolo.train(trainer=...)`` that fine-tunes ``yolo.model`` as pruned.

    Example::

        yolo.train(data="my_data.yaml", epochs=10, trainer=pruning_core_yolo.pruned_trainer(yolo))
    """
    from pruning_core import ConfigurationError

    model = getattr(yolo, "model", None)
    if model is None or not hasattr(yolo, "_smart_load"):
        raise ConfigurationError("pruned_trainer expects an ultralytics YOLO object (ultralytics.YOLO(...))")
    base = yolo._smart_load("trainer")

    class PrunedModelTrainer(base):
        """Trains the pruned model instead of rebuilding the architecture from its YAML."""

        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> Any:
            head_classes = getattr(model.model[-1], "nc", None) if hasattr(model, "model") else None
            data_classes = self.data.get("nc") if isinstance(getattr(self, "data", None), dict) else None
            if isinstance(head_classes, int) and isinstance(data_classes, int) and head_classes != data_classes:
                # ultralytics would set model.nc to the data's count while the head still predicts the old one.
                raise ConfigurationError(
                    f"pruned_trainer: the pruned model's Detect head predicts {head_classes} classes but the "
                    f"dataset {self.args.data!r} has {data_classes}. Build the model for your classes before "
                    f"pruning (a YAML with nc: {data_classes}, or a model already fine-tuned on this data).")
            return model

    PrunedModelTrainer.__name__ = f"Pruned{base.__name__}"
    return PrunedModelTrainer
