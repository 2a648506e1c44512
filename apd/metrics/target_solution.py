"""Target-solution error of causal importances on one-hot inputs (docs/method.md, SPD metrics).

For methods whose components come one group per matrix (SPD), each matrix has a known pattern of
importances on the one-hot batch (`ONE_HOT_VALUE` times the identity, one feature on per row):

* **identity** (a matrix that reads features in, e.g. a residual MLP's `W_in`): the columns are
  matched to features by the Hungarian algorithm on the raw importances; every entry off the matched
  diagonal above `tol` counts (the unmatched columns included), and every matched entry below
  `1 - tol`;
* **dense** (a matrix every feature uses alike, e.g. a residual MLP's `W_out`, k = its neurons): the
  columns sorted by their sum, descending; each of the first k columns without an entry `>= 1 - tol`
  counts one, and so does every entry above `tol` in the other columns.

Zero means the ground truth's pattern. Unlike `apd.metrics.identity` the rows are not normalised:
an importance of 0.5 is half on, whatever the row's largest.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

ONE_HOT_VALUE = 0.75
"""The value of the one active feature in the one-hot batch, as the SPD code evaluates it."""


def _host(ci: Tensor) -> np.ndarray:
    """`(I, n, C)` on the host, NaN (a diverged run) as 0 (the Hungarian solver rejects NaN)."""
    return torch.nan_to_num(ci.detach(), nan=0.0).double().cpu().numpy()


def identity_error(ci: Tensor, tol: float) -> np.ndarray:
    """Identity-pattern error per instance of importances `ci (I, n_features, C)`: `(I,)` counts."""
    out = []
    for mat in _host(ci):
        rows, cols = linear_sum_assignment(mat, maximize=True)
        diag = mat[rows, cols]
        off = int((mat > tol).sum() - (diag > tol).sum())
        out.append(off + int((diag < 1 - tol).sum()) + (mat.shape[0] - len(rows)))
    return np.asarray(out, dtype=np.int64)


def dense_error(ci: Tensor, k: int, tol: float) -> np.ndarray:
    """Dense-pattern error per instance of importances `ci (I, n_features, C)` with k dense columns: `(I,)`."""
    out = []
    for mat in _host(ci):
        order = np.argsort(-mat.sum(0), kind="stable")
        dense, rest = mat[:, order[:k]], mat[:, order[k:]]
        missing = max(0, k - mat.shape[1])  # fewer components than dense columns
        out.append(missing + int((dense.max(0, initial=0.0) < 1 - tol).sum()) + int((rest > tol).sum()))
    return np.asarray(out, dtype=np.int64)


__all__ = ["ONE_HOT_VALUE", "dense_error", "identity_error"]
