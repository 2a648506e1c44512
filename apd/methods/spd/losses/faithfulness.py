"""Faithfulness: the subcomponents of each matrix must sum to its weight (docs/spd.md §1.4)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def faithfulness_loss(target_weights: Mapping[str, Tensor], summed: Mapping[str, Tensor]) -> Tensor:
    """`sum_l ||W_l - A_l B_l||^2 / N` per instance `(I,)`, over the layers in `summed` (`(I, d_in, d_out)` each).

    N counts the elements of every decomposed matrix, so TMS's tied matrix counts twice (the code's
    choice; the paper says "all target parameters", which only rescales the coefficient).
    """
    sq = sum((target_weights[name] - w).pow(2).sum(dim=(-2, -1)) for name, w in summed.items())
    n = sum(w[0].numel() for w in summed.values())
    return sq / n  # type: ignore[return-value]
