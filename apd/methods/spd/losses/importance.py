"""Importance minimality: few subcomponents causally important per input (docs/spd.md §1.4)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def importance_minimality_loss(g_plus: Sequence[Tensor], pnorm: float, batch_size: int | None = None) -> Tensor:
    """`(1/batch) sum_b sum_l sum_c (g+)^p` per instance: each `g+ (n, I, C)` -> `(I,)`.

    No normalisation by the number of matrices or subcomponents, as in the code. `batch_size` (default n)
    lets the fast step add the samples it did not compute separately.
    """
    total = g_plus[0].pow(pnorm).sum(dim=(0, 2))
    for g in g_plus[1:]:
        total = total + g.pow(pnorm).sum(dim=(0, 2))
    return total / (batch_size or g_plus[0].shape[0])
