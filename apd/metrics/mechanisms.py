"""Component weights against known true mechanisms (docs/method.md): matching, cosine, norm, split.

Mechanism k is its part of every decomposed parameter, flattened into one vector `M_k`; component c
likewise `P_c` (over the same parameters). The matching pairs mechanisms with components one to one,
maximising the summed cosine (Hungarian, `scipy.optimize.linear_sum_assignment`). A matched pair is
scored by its cosine and its norm ratio `|P_c| / |M_k|`.

The split share says how a mechanism is spread over components: the least-squares coefficients
`a_ck` of every component in the mechanisms' basis (`P_c ~ sum_k a_ck M_k`), and per mechanism the
second-largest `|a_ck|` over the components. A feature halved over two components gives 0.5, a
90/10 split 0.1, one component carrying it 0 (a component carrying two mechanisms is a merge, not
a split: it is the matching's cosine that catches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

EPS = 1e-12


@dataclass(frozen=True)
class MechanismMatch:
    """Per instance and true mechanism `(I, K)`; `match` on the host."""

    cos: Tensor
    """Cosine of each mechanism with its matched component (0 when C < K leaves it unmatched)."""
    norm_ratio: Tensor
    """`|P_match| / |M_k|` (0 when unmatched)."""
    split: Tensor
    """Second-largest |least-squares coefficient| of the mechanism over the components."""
    present: Tensor
    """The mechanism has nonzero weights in the compared parameters."""
    match: np.ndarray
    """Matched component per mechanism, -1 when none."""


def cosines(true: Tensor, comps: Tensor) -> Tensor:
    """`(I, K, D)` mechanisms and `(I, C, D)` components -> cosines `(I, K, C)` (0 for zero vectors)."""
    dot = torch.einsum("i k d, i c d -> i k c", true, comps)
    norms = true.norm(dim=-1).unsqueeze(-1) * comps.norm(dim=-1).unsqueeze(1)
    return dot / norms.clamp_min(EPS)


def split_shares(true: Tensor, comps: Tensor) -> Tensor:
    """Second-largest |a_ck| over components c of the coefficients `P_c ~ sum_k a_ck M_k`: `(I, K)`."""
    gram = torch.einsum("i k d, i l d -> i k l", true, true)
    proj = torch.einsum("i k d, i c d -> i k c", true, comps)
    coef = torch.linalg.pinv(gram) @ proj  # (I, K, C): a_ck
    if coef.shape[-1] < 2:
        return torch.zeros(coef.shape[:2], dtype=coef.dtype, device=coef.device)
    return coef.abs().topk(2, dim=-1).values[..., 1]


def match_mechanisms(true: Tensor, comps: Tensor) -> MechanismMatch:
    """Match mechanisms `true (I, K, D)` with components `comps (I, C, D)` and score each pair."""
    true, comps = true.double(), comps.double()
    cos = cosines(true, comps)  # (I, K, C)
    present = true.norm(dim=-1) > 0
    # Hungarian matching is a host algorithm: the only device->host copy of this metric; NaN
    # weights (a diverged run) count as cosine 0 for the matching and stay NaN in the scores
    host = torch.nan_to_num(cos, nan=0.0).cpu().numpy()
    n_inst, K, _ = host.shape
    match = np.full((n_inst, K), -1, dtype=np.int64)
    for i in range(n_inst):
        rows, cols = linear_sum_assignment(host[i], maximize=True)
        match[i, rows] = cols
    idx = torch.as_tensor(match, device=cos.device)
    matched = idx >= 0
    safe = idx.clamp_min(0)
    pair_cos = cos.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    ratio = comps.norm(dim=-1).gather(-1, safe) / true.norm(dim=-1).clamp_min(EPS)
    zero = torch.zeros((), dtype=cos.dtype, device=cos.device)
    return MechanismMatch(
        cos=torch.where(matched, pair_cos, zero),
        norm_ratio=torch.where(matched, ratio, zero),
        split=split_shares(true, comps),
        present=present,
        match=match,
    )
