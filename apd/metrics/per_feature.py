"""Per-feature losses on samples with exactly one active feature (docs/method.md)."""

from __future__ import annotations

import torch
from torch import Tensor


def single_active_feature(x: Tensor) -> tuple[Tensor, Tensor]:
    """`(is_single, feature)`, each `(batch, I)`: exactly one nonzero input, and which one."""
    active = x != 0
    return active.sum(-1) == 1, active.to(torch.uint8).argmax(dim=-1)


def per_feature_sums(values: Tensor, feature: Tensor, valid: Tensor, n_features: int) -> tuple[Tensor, Tensor]:
    """Sum of `values (batch, I)` and sample counts per feature over valid samples -> `(I, f)` each.

    `feature (batch, I)` long, `valid (batch, I)` bool.
    """
    n_inst = values.shape[1]
    idx = feature.T  # (I, batch)
    w = valid.T.to(values.dtype)
    zeros = torch.zeros(n_inst, n_features, dtype=values.dtype, device=values.device)
    sums = zeros.scatter_add(1, idx, values.T * w)
    counts = zeros.scatter_add(1, idx, w)
    return sums, counts


def normalized_mse(mse_vs_target: Tensor, target_mse_vs_labels: Tensor) -> Tensor:
    """APD top-1 MSE vs the target output in units of the target's own MSE vs the labels.

    A target that matches its labels exactly on a feature gives a huge ratio unless APD is exact
    there too (the denominator is floored at 1e-12).
    """
    return mse_vs_target / target_mse_vs_labels.clamp_min(1e-12)
