"""Identity-pattern error of the one-hot attribution matrix, for any target (docs/method.md).

Rows (features) are normalised by their max, columns (components) are matched to features by the
Hungarian algorithm, and we count matched entries below `1 - tol` (a feature without a clean
component of its own) plus every other entry above `tol` (a feature leaking into other components).
Zero means one clean component per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


@dataclass(frozen=True)
class IdentityPattern:
    """Counts per instance and what the heatmap needs (host arrays)."""

    off_diag: np.ndarray
    """`(instances,)` entries off the matched diagonal that exceed `tol`."""
    diag_miss: np.ndarray
    """`(instances,)` features whose matched entry is below `1 - tol` (or that got no component)."""
    matrix: np.ndarray
    """`(instances, features, C)` attributions with each row divided by its max."""
    assignment: np.ndarray
    """`(instances, features)` matched component per feature, -1 where C < features left it out."""

    @property
    def error(self) -> np.ndarray:
        return self.off_diag + self.diag_miss


def normalize_rows(attr: Tensor) -> Tensor:
    """Divide every row of `attr (..., features, C)` by its max; all-zero rows stay zero."""
    row_max = attr.amax(dim=-1, keepdim=True)
    return attr / torch.where(row_max > 0, row_max, torch.ones_like(row_max))


def identity_pattern(attr: Tensor, tol: float) -> IdentityPattern:
    """Identity-pattern error of one-hot attributions `attr (instances, features, C)` (>= 0)."""
    # Hungarian matching is a host algorithm: the only device->host copy of this metric
    # NaN attributions (a diverged run) count as zero: the Hungarian solver rejects them
    mats = normalize_rows(torch.nan_to_num(attr.detach(), nan=0.0)).double().cpu().numpy()
    n_inst, n_f, _ = mats.shape
    off, miss = np.zeros(n_inst, dtype=np.int64), np.zeros(n_inst, dtype=np.int64)
    assignment = np.full((n_inst, n_f), -1, dtype=np.int64)
    for i, mat in enumerate(mats):
        rows, cols = linear_sum_assignment(mat, maximize=True)
        assignment[i, rows] = cols
        diag = np.zeros(n_f)
        diag[rows] = mat[rows, cols]
        miss[i] = int((diag < 1 - tol).sum())
        off[i] = int((mat > tol).sum() - (diag > tol).sum())
    return IdentityPattern(off_diag=off, diag_miss=miss, matrix=mats, assignment=assignment)
