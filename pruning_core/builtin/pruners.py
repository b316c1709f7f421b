"""Built-in pruning algorithms, registered by name like a third-party plugin's would be."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..records import PrunerSpec


@hookimpl
def register_pruners():
    from .. import pruner

    return [
        PrunerSpec("base", pruner.BasePruner, "rank channels by any importance criterion and remove the lowest"),
        PrunerSpec("magnitude", pruner.MagnitudePruner, "L2 weight magnitude (Li et al., 2017)"),
        PrunerSpec("random", pruner.RandomPruner, "uniformly random channels (a baseline)"),
        PrunerSpec("bn_scale", pruner.BNScalePruner, "L1 on BatchNorm scales while training (network slimming)"),
        PrunerSpec("group_norm", pruner.GroupNormPruner, "group lasso over coupled parameters (DepGraph)"),
        PrunerSpec("growing_reg", pruner.GrowingRegPruner, "growing L2 penalty on channels to prune"),
    ]
