"""Built-in importance criteria, registered by name like a third-party plugin's would be."""

from __future__ import annotations

import functools

from ..hookspecs import hookimpl
from ..records import ImportanceSpec


@hookimpl
def register_importance_criteria():
    from .. import importance as imp

    return [
        ImportanceSpec("l1", functools.partial(imp.GroupMagnitudeImportance, p=1), "group L1 norm of weights"),
        ImportanceSpec("l2", functools.partial(imp.GroupMagnitudeImportance, p=2), "group L2 norm of weights"),
        ImportanceSpec("magnitude", imp.GroupMagnitudeImportance, "group L-p norm of weights (p=2 by default)"),
        ImportanceSpec("taylor", imp.GroupTaylorImportance, "first-order Taylor |w * grad| (needs backward)"),
        ImportanceSpec("hessian", imp.GroupHessianImportance, "w^2 * diagonal Hessian from per-sample grads"),
        ImportanceSpec("random", imp.RandomImportance, "uniform random scores"),
        ImportanceSpec("bn_scale", imp.BNScaleImportance, "|gamma| of BatchNorm layers"),
        ImportanceSpec("lamp", imp.LAMPImportance, "layer-adaptive magnitude (LAMP) scores"),
        ImportanceSpec("fpgm", imp.FPGMImportance, "distance to the geometric median of filters"),
        ImportanceSpec("activation", imp.ActivationImportance, "mean |activation| over calibration batches"),
        ImportanceSpec("obdc", imp.OBDCImportance, "w^2 * per-sample Fisher diagonal (Torch-Pruning's OBDC)"),
        ImportanceSpec("wanda", imp.WandaImportance, "structured Wanda |W| * input RMS (needs calibration)"),
        ImportanceSpec("flap", imp.FLAPImportance, "FLAP input fluctuation * |W|^2, standardised (calibration)"),
        ImportanceSpec("obs", imp.OBSImportance, "output error after optimal refit, from the input Gram"),
    ]
