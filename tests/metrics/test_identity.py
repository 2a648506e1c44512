"""Identity-pattern error of one-hot attribution matrices."""

from __future__ import annotations

import numpy as np
import torch

from apd.methods.apd.components import Components
from apd.metrics import evaluate, metric_keys
from apd.metrics.identity import identity_pattern, normalize_rows
from apd.targets.file import LinearStack


def test_clean_permuted_pattern_has_no_error():
    # feature f's only attribution is on component perm[f] (scaled): the matching undoes the
    # permutation, every matched entry is 1 after row normalisation, everything else 0
    perm = [2, 0, 3, 1]
    attr = torch.zeros(1, 4, 5)
    for f, c in enumerate(perm):
        attr[0, f, c] = 3.0 * (f + 1)
    p = identity_pattern(attr, tol=0.1)
    assert p.error.tolist() == [0]
    assert p.assignment.tolist() == [perm]


def test_hand_counted_pattern():
    attr = torch.tensor(
        [
            [
                [1.0, 0.05, 0.0],
                [0.5, 1.0, 0.0],
                [0.0, 0.2, 0.8],  # row max 0.8 -> [0, 0.25, 1]
            ]
        ]
    )
    # matching is the diagonal (sum 3); entries > 0.1 off it: 0.5 and 0.25 -> 2; no diagonal < 0.9
    p = identity_pattern(attr, tol=0.1)
    assert (p.off_diag.tolist(), p.diag_miss.tolist()) == ([2], [0])
    # tol 0.3: only 0.5 is off; the diagonal is still all 1
    assert identity_pattern(attr, tol=0.3).error.tolist() == [1]


def test_fewer_components_than_features_and_dead_rows():
    attr = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # feature 2 has no attribution
    p = identity_pattern(attr, tol=0.1)
    # features 0, 1 matched; feature 2 unmatched (diagonal 0 -> 1 miss), nothing off-diagonal
    assert p.assignment[0, 2] == -1
    assert (p.off_diag.tolist(), p.diag_miss.tolist()) == ([0], [1])
    np.testing.assert_array_equal(normalize_rows(attr)[0, 2].numpy(), [0.0, 0.0])


def test_generic_target_verdict_is_a_clean_identity_pattern(cfg_factory):
    # one layer y = x @ diag(2, 3, 4); component c = e_c e_c^T diag: one-hot x_f reaches only c = f
    target = LinearStack([torch.diag(torch.tensor([2.0, 3.0, 4.0]))[None]], [None])
    comps = Components(target.param_shapes(), n_instances=1, C=4, m=1)
    (param,) = target.param_shapes()
    with torch.no_grad():
        comps.A[param].zero_()
        comps.B[param].zero_()
        for c, scale in enumerate([2.0, 3.0, 4.0]):
            comps.A[param][0, c, c, 0] = 1.0
            comps.B[param][0, c, 0, c] = scale
    metrics, _ = evaluate(cfg_factory(4), target, comps, sample=lambda b: torch.zeros(b, 1, 3))
    # no ground truth shipped: judged by the identity pattern alone
    mechanism_keys = {k for k in metric_keys("file") if "mechanism" in k or "split" in k}
    assert set(metrics) == set(metric_keys("file")) - mechanism_keys
    assert metrics["family"] == "file" and metrics["ground_truth"] is False
    assert metrics["identity_error"] == 0 and metrics["recovered_all"] is True
    with torch.no_grad():
        comps.A[param][0, 0, 1, 0] = 1.0  # component 0 now also reads feature 1
    metrics, _ = evaluate(cfg_factory(4), target, comps, sample=lambda b: torch.zeros(b, 1, 3))
    # x_1 = 1: component 0 outputs 2 (attribution 2^2 = 4), component 1 outputs 3 (3^2 = 9);
    # row [4/9, 1, 0, 0]: 4/9 > 0.1 off the diagonal
    assert (metrics["identity_off_diag"], metrics["identity_diag_miss"]) == (1, 0)
    assert metrics["recovered"] == 0.0
