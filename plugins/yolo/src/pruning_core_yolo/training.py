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
            return model

    PrunedModelTrainer.__name__ = f"Pruned{base.__name__}"
    return PrunedModelTrainer
