"""Reconstruction losses: the masked model's output against the target's (docs/spd.md §1.4).

One divergence per masked pass, per instance; the loss terms average them over mask samples (and,
layerwise, over matrices). The MSE is the mean over (batch, outputs); KL (language models) is
`KL(softmax(f) || softmax(f_masked))`, summed over outputs and averaged over the batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def divergence(out: Tensor, target_out: Tensor, kind: str = "mse", batch_size: int | None = None) -> Tensor:
    """`D(f, f_masked)` per instance: `out (..., n, I, o)` against `target_out (n, I, o)` -> `(..., I)`.

    `batch_size` (default n) is the divisor of the batch mean: the fast step passes the whole batch
    when it computed only the samples that can differ (all other samples add exactly 0).
    """
    n, n_out = target_out.shape[0], target_out.shape[-1]
    if kind == "mse":
        per_sample = (out - target_out).pow(2).sum(-1) / n_out
    else:
        log_p = F.log_softmax(target_out, dim=-1)
        per_sample = (log_p.exp() * (log_p - F.log_softmax(out, dim=-1))).sum(-1)
    return per_sample.sum(-2) / (batch_size or n)
