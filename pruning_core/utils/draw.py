"""Torch-Pruning's plotting helpers: ``draw_dependency_graph``, ``draw_groups``, ``draw_computational_graph``.

Each draws a matrix with one row and one column per layer side (``conv1 (out)``,
``layer1.0.conv1 (in)``...) or per layer, fills the cells that are related, saves the figure to
``save_as`` and returns ``(figure, axes)``. They read the graph through its public API
(``get_all_groups`` and each group's dependencies), so they work for any plugin's layers.

matplotlib is optional: without it these functions raise :class:`MissingPackageError`
(a :class:`pruning_core.PruningError` and an ``ImportError``) naming ``pip install matplotlib``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import PruningError

Node = Tuple[str, str]  # (layer name, "out" or "in")


class MissingPackageError(PruningError, ImportError):
    """An optional package a helper needs is not installed."""


def _matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPackageError("the tp.utils.draw_* helpers need matplotlib, which is not installed: "
                                  "pip install matplotlib") from None
    return Figure, FigureCanvasAgg


def _all_groups(DG: Any) -> Iterable[Any]:
    if getattr(DG, "model", None) is None:
        from ..errors import GraphError

        raise GraphError("draw the graph after DG.build_dependency(model, example_inputs)")
    return DG.get_all_groups(root_module_types=None)


def _side(DG: Any, fn: Any) -> str:
    return "out" if DG.is_out_channel_pruning_fn(fn) else "in"


def group_nodes(DG: Any) -> List[List[Node]]:
    """Each group of the graph as the list of layer sides it touches (root first)."""
    groups = []
    for group in _all_groups(DG):
        nodes: List[Node] = []
        for dep, _ in group:
            for node in ((dep.source.qualname, _side(DG, dep.trigger)), (dep.target.qualname, _side(DG, dep.handler))):
                if node not in nodes:
                    nodes.append(node)
        groups.append(nodes)
    return groups


def dependency_edges(DG: Any) -> Set[Tuple[Node, Node]]:
    """(trigger side, triggered side) for every dependency of every group."""
    edges = set()
    for group in _all_groups(DG):
        for dep, _ in group:
            if dep.is_triggered_by_pruning():
                edges.add(((dep.source.qualname, _side(DG, dep.trigger)), (dep.target.qualname, _side(DG, dep.handler))))
    return edges


def _plot(matrix: List[List[float]], labels: Sequence[str], save_as: Optional[str], title: Optional[str],
          figsize: Tuple[float, float], dpi: int, cmap: Any) -> Tuple[Any, Any]:
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(matrix, cmap=cmap or "Blues", interpolation="nearest")
    if len(labels) <= 80:  # beyond that, names overlap into an unreadable block
        axes.set_xticks(range(len(labels)))
        axes.set_yticks(range(len(labels)))
        axes.set_xticklabels(labels, rotation=90, fontsize=6)
        axes.set_yticklabels(labels, fontsize=6)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    if save_as:
        figure.savefig(save_as, dpi=dpi)
    return figure, axes


def _index(nodes: Iterable[Any]) -> Dict[Any, int]:
    order: Dict[Any, int] = {}
    for node in nodes:
        order.setdefault(node, len(order))
    return order


def _label(node: Any) -> str:
    return f"{node[0]} ({node[1]})" if isinstance(node, tuple) else str(node)


def draw_dependency_graph(DG: Any, save_as: Optional[str], title: str = "Dependency graph",
                          figsize: Tuple[float, float] = (16, 16), dpi: int = 200, cmap: Any = None) -> Tuple[Any, Any]:
    """Cell (a, b) is filled when pruning layer side ``a`` forces pruning ``b``."""
    edges = dependency_edges(DG)
    order = _index(node for edge in sorted(edges) for node in edge)
    matrix = [[0.0] * len(order) for _ in order]
    for a, b in edges:
        matrix[order[a]][order[b]] = 1.0
    return _plot(matrix, [_label(n) for n in order], save_as, title, figsize, dpi, cmap)


def draw_groups(DG: Any, save_as: Optional[str], title: str = "Groups", figsize: Tuple[float, float] = (16, 16),
                dpi: int = 200, cmap: Any = None) -> Tuple[Any, Any]:
    """Cells (a, b) are filled when layer sides ``a`` and ``b`` belong to one group (shaded per group)."""
    groups = group_nodes(DG)
    order = _index(node for nodes in groups for node in nodes)
    matrix = [[0.0] * len(order) for _ in order]
    for number, nodes in enumerate(groups, 1):
        for a in nodes:
            for b in nodes:
                matrix[order[a]][order[b]] = 0.3 + 0.7 * number / len(groups)
    return _plot(matrix, [_label(n) for n in order], save_as, title, figsize, dpi, cmap)


def draw_computational_graph(DG: Any, save_as: Optional[str], title: str = "Computational graph",
                             figsize: Tuple[float, float] = (16, 16), dpi: int = 200,
                             cmap: Any = None) -> Tuple[Any, Any]:
    """Cells (a, b) and (b, a) are filled when one layer's channels reach the other directly
    (a producer and its consumer, or a layer and the norm that follows it)."""
    links = set()
    for (source, _), (target, _) in dependency_edges(DG):
        if source != target:
            links.add((source, target))
    order = _index(name for link in sorted(links) for name in link)
    matrix = [[0.0] * len(order) for _ in order]
    for a, b in links:
        matrix[order[a]][order[b]] = matrix[order[b]][order[a]] = 1.0
    return _plot(matrix, list(order), save_as, title, figsize, dpi, cmap)


__all__ = ["draw_dependency_graph", "draw_groups", "draw_computational_graph", "group_nodes", "dependency_edges",
           "MissingPackageError"]
