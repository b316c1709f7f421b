"""Hypothesis strategies for random architectures, so that failing examples shrink.

:func:`specs` draws the list of blocks and every channel count directly (no seed
fed to a private random generator), so when a property fails, hypothesis
shrinks the model: blocks are deleted, kinds move towards plain convolutions and
widths towards the smallest. The specs have the format of
:func:`pruning_core.testing.architectures.random_spec` and build with
:func:`~pruning_core.testing.architectures.build`.

Every spec ends with a *tail* block whose output channels are fresh (a
convolution, a linear layer, a concatenation of two convolutions) and feed only
the classifier head. Its channels are therefore always one prunable group, so a
drawn model without any group is impossible by construction.

This module imports hypothesis, which is a test dependency only; importing
:mod:`pruning_core.testing` does not import it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from hypothesis import strategies as st

from ..errors import ConfigurationError
from .architectures import SAFE, UNSAFE, Spec, _divisors

# Plain convolution first: it is where a shrinking example's blocks end up.
SAFE_KINDS = ["conv"] + sorted(SAFE - {"conv", "flatten_head"})
ALL_KINDS = SAFE_KINDS + sorted(UNSAFE)
# Blocks whose output channels are new and constrained by nothing that follows inside the block.
TAIL_KINDS = ["conv", "channels_last_linear", "concat", "conv1d_path", "transpose_conv"]

WIDTHS = [6, 8, 10, 12, 16]


def _pick(options: Sequence[Any], choice: int) -> Any:
    return options[choice % len(options)]


def _realize(raw: Dict[str, Any], channels: int) -> Dict[str, Any]:
    """The block ``raw`` (a kind and free choices) made to fit ``channels`` input channels.

    The choices are plain integers reduced modulo the valid options, so a block stays
    valid when the blocks before it change width during shrinking. Kinds that cannot
    take ``channels`` fall back as :func:`random_spec` does (to a conv or a residual).
    """
    kind, choice = raw["kind"], raw["choice"]
    block: Dict[str, Any] = {"kind": kind, "in": channels, "out": channels}
    if kind in ("conv", "transpose_conv", "conv1d_path", "channels_last_linear", "maxout"):
        block["out"] = raw["width"]
    elif kind == "concat":
        block["a"], block["b"] = raw["part_a"], raw["part_b"]
        block["out"] = block["a"] + block["b"]
    elif kind in ("shuffle_split", "chunk_gate", "split_written") and channels % 2:
        block.update(kind="conv", out=raw["width"])
    elif kind == "view_shuffle":
        if _divisors(channels):
            block["groups"] = _pick(_divisors(channels), choice)
        else:
            block["kind"] = "residual"
    elif kind == "grouped":
        block["groups"] = _pick(_divisors(channels) or [1], choice)
        block["out"] = block["groups"] * _pick([2, 3, 4], raw["factor"])
    elif kind == "pixel_shuffle":
        block["out"] = raw["part_a"]
    elif kind == "squeeze_excite":
        block["hidden"] = _pick([2, 4], choice)
    elif kind == "attention":
        block["heads"] = _pick([h for h in (1, 2, 4) if channels % h == 0], choice)
    elif kind == "groupnorm":
        block["groups"] = _pick([1] + _divisors(channels), choice)
    elif kind == "upsample_cat":
        block["skip"] = _pick([4, 8], choice)
        block["out"] = channels + block["skip"]
    elif kind == "slice_cat":
        block["keep"] = 1 + choice % (channels - 1)
        block["extra"] = _pick([4, 8], raw["factor"])
        block["out"] = block["keep"] + block["extra"]
    elif kind == "split_uneven":
        block["first"] = 1 + choice % (channels - 1)
    return block


def _raw_blocks(kinds: Sequence[str]) -> st.SearchStrategy:
    """A block kind with every free choice it might need, drawn independently of the channel count."""
    return st.fixed_dictionaries({
        "kind": st.sampled_from(list(kinds)),
        "width": st.sampled_from(WIDTHS),
        "part_a": st.sampled_from([4, 6, 8]),
        "part_b": st.sampled_from([4, 6, 8]),
        "choice": st.integers(0, 15),
        "factor": st.integers(0, 3),
    })


def _assemble(stem: int, body: List[Dict[str, Any]], tail: Dict[str, Any], head: str) -> Spec:
    spec: Spec = [{"kind": "stem", "out": stem}]
    channels = stem
    for raw in body + [tail]:
        block = _realize(raw, channels)
        spec.append(block)
        channels = block["out"]
    spec.append({"kind": head, "in": channels, "classes": 5})
    return spec


def specs(allow_unsafe: bool = False, max_blocks: int = 5) -> st.SearchStrategy:
    """Architecture specs of 1 to ``max_blocks`` blocks between a stem and a classifier head.

    :param allow_unsafe: also draw blocks that mix channels other than through weights
        (normalisation over channels, attention, a channel mean), for which the
        zero-contribution oracle does not hold (see ``architectures.oracle_safe``).
    :param max_blocks: the most blocks, the tail block included.
    :returns: a strategy for lists of block dicts, built with ``architectures.build``.
    """
    if max_blocks < 1:
        raise ConfigurationError(f"specs(max_blocks={max_blocks}): give at least 1 (the tail block)")
    kinds = ALL_KINDS if allow_unsafe else SAFE_KINDS
    return st.builds(
        _assemble,
        stem=st.sampled_from([8, 12, 16]),
        body=st.lists(_raw_blocks(kinds), max_size=max_blocks - 1),
        tail=_raw_blocks(TAIL_KINDS),
        head=st.sampled_from(["pool_head", "flatten_head"]),
    )


__all__ = ["specs", "SAFE_KINDS", "ALL_KINDS", "TAIL_KINDS"]
