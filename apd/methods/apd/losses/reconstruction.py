"""Minimality: the top-k model must reproduce the target's output and hidden activations (1.6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def topk_recon_loss(out_topk: Tensor, out_target: Tensor) -> Tensor:
    """`mean_{b,o} (f(x; sum_c s_c P_c) - f(x; W))^2` per instance: `(batch, I, o) -> (I,)`."""
    # a sum, whose gradient is a broadcast view: the elementwise gradients then keep the outputs' memory
    # layout (the fast step's is batch-innermost), where mean's and mse_loss's are laid out afresh
    return (out_topk - out_target).square().sum(dim=(0, 2)) / (out_topk.shape[0] * out_topk.shape[2])


def act_recon_loss(acts_topk: list[Tensor], acts_target: list[Tensor], *, relu: bool) -> Tensor:
    """`mean_b sum_l sum_j (h^topk_lj - h^tgt_lj)^2 / sum_l d_l` per instance.

    With `relu`, compares ReLU(h) (residual MLP: the MLP's hidden activations after the
    non-linearity; the pre-activations of unused directions may legitimately differ).
    """
    act = F.relu if relu else (lambda t: t)
    sq = sum((act(a) - act(b)).square().sum(dim=(0, 2)) for a, b in zip(acts_topk, acts_target, strict=True))
    width = sum(a.shape[-1] for a in acts_target)
    return sq / (width * acts_target[0].shape[0])  # type: ignore[operator,return-value]
