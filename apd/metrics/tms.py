"""TMS ground truth (docs/method.md): MMCS, ML2R, distinct matching, hidden-layer check.

Compared per feature j: the target's row j of `linear1` (`W[i, j, :]`, the paper's column) and the
same row of every component's `linear1` matrix (`P[i, c, j, :]`). Hidden layers and the tied
`linear2` are ignored, as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-12


@dataclass(frozen=True)
class TMSScores:
    """Per-instance MMCS/ML2R and the argmax matching of features to components."""

    mmcs: Tensor
    """`(instances,)` mean over features of the best cosine similarity."""
    ml2r: Tensor
    """`(instances,)` mean over features of `|P_{mcs(j), j}| / |W_j|`."""
    n_distinct: Tensor
    """`(instances,)` number of distinct components the matching picks (long)."""
    match: Tensor
    """`(instances, n_features)` `mcs(j) = argmax_c cos_{c,j}` (long)."""


def feature_cosines(W: Tensor, P: Tensor) -> Tensor:
    """Cosine of target row j `W (I, f, h)` with component row j `P (I, C, f, h)` -> `(I, C, f)`.

    A zero vector has cosine 0 with everything.
    """
    dot = torch.einsum("i f h, i c f h -> i c f", W, P)
    norms = W.norm(dim=-1).unsqueeze(1) * P.norm(dim=-1)
    return dot / norms.clamp_min(EPS)


def tms_scores(W: Tensor, P: Tensor) -> TMSScores:
    """MMCS, ML2R and distinct-match count of components `P (I, C, f, h)` against `W (I, f, h)`."""
    n_inst, C = P.shape[:2]
    best_cos, match = feature_cosines(W, P).max(dim=1)  # (I, f): first argmax on ties
    matched_norm = P.norm(dim=-1).gather(1, match.unsqueeze(1)).squeeze(1)  # (I, f)
    ratio = matched_norm / W.norm(dim=-1).clamp_min(EPS)
    picked = torch.zeros(n_inst, C, dtype=torch.bool, device=P.device).scatter_(1, match, True)
    return TMSScores(mmcs=best_cos.mean(-1), ml2r=ratio.mean(-1), n_distinct=picked.sum(-1), match=match)


def relative_frobenius_error(approx: Tensor, reference: Tensor) -> Tensor:
    """`|approx - reference|_F / |reference|_F` per instance: `(I, d_in, d_out)` pairs -> `(I,)`.

    Used for the hidden identity layers: `approx` = sum of the components, `reference` = I.
    """
    diff = (approx - reference).flatten(1).norm(dim=-1)
    return diff / reference.flatten(1).norm(dim=-1).clamp_min(EPS)
