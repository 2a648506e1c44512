"""Lp minimality (appendix variant, `topk: null`): penalise attributions directly (1.12)."""

from __future__ import annotations

from torch import Tensor


def lp_weights(attr: Tensor, *, pnorm: float, n_outputs: int) -> Tensor:
    """`(attr / d_L + 1e-16)^(pnorm/2)` = the paper's |A_c(x)|^p1; also the Schatten mask."""
    return (attr / n_outputs + 1e-16).pow(pnorm / 2)


def lp_sparsity_loss(weights: Tensor) -> Tensor:
    """`mean_b sum_c w_bc` per instance: `(batch, I, C) -> (I,)`."""
    return weights.sum(-1).mean(0)
