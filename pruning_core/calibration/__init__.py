"""Calibration: statistics of layer inputs over real batches, for data-aware criteria and compensation.

* :class:`CalibrationStatistics` records per-channel moments (and the Gram of each
  layer's unfolded input) in float64 through the layer handlers.
* :class:`LinearForm` is what a handler's optional ``linear_form(layer)`` returns:
  how the layer maps its input to its output linearly (Gram and compensation need it).

Pruners use both when given ``calibration=batches`` (see ``runner.py``).
"""

from .forms import LinearForm, conv_form, dense_form, linear_form
from .statistics import CalibrationStatistics, LayerStatistics, Request

__all__ = ["CalibrationStatistics", "LayerStatistics", "Request", "LinearForm", "linear_form", "dense_form",
           "conv_form"]
