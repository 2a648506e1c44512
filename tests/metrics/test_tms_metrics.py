"""TMS MMCS / ML2R / distinct matching, weight matching and the TMS verdict on hand-built decompositions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from apd.metrics import evaluate, judge, metric_keys
from apd.metrics.tms import feature_cosines, relative_frobenius_error, tms_scores
from apd.targets.tms import HIDDEN_KEYS

PERFECT = [[0], [1], [2], [3], [4]]
MERGED = [[0, 1], [], [2], [3], [4]]  # features 0 and 1 share component 0; component 1 is empty


def no_data(batch: int) -> torch.Tensor:
    raise AssertionError("TMS metrics need no data")


def test_perfect_split_is_recovered(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms()
    # component c = e_c W_c (row c of W): cos(c, c) = 1, other components' row c is 0 -> cos 0;
    # MMCS = mean_j 1 = 1, ML2R = mean_j |W_j| / |W_j| = 1, 5 distinct matches
    metrics, _ = evaluate(cfg_factory(5), target, comps(target, PERFECT), sample=no_data)
    assert metrics["mmcs"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ml2r"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["n_distinct_per_instance"] == [5]
    assert metrics["recovered"] == 1.0 and metrics["recovered_all"] is True
    assert metrics["identity_error"] == 0
    # every mechanism e_j W_j is exactly one component: cosine 1, norm ratio 1, no second holder
    assert (metrics["mechanism_cos"], metrics["mechanism_norm_min"], metrics["split_share"]) == pytest.approx((1, 1, 0))
    assert metrics["family"] == "tms" and metrics["n_instances"] == 1
    # every key but the hidden-layer ones and the check of the unset ml2r_max
    absent = {*HIDDEN_KEYS, "check_ml2r_max_per_instance", "check_hidden_identity_per_instance"}
    assert set(metrics) == set(metric_keys("tms")) - absent
    json.dumps(metrics, allow_nan=False)


def test_diverged_components_give_null_metrics_not_errors(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms()
    c = comps(target, PERFECT)
    with torch.no_grad():
        c.B["linear1"][:, 0] = float("nan")
    metrics, _ = evaluate(cfg_factory(5), target, c, sample=no_data)
    assert metrics["mmcs"] is None and metrics["recovered"] == 0.0
    assert metrics["check_mmcs_per_instance"] == [False] and metrics["check_mechanism_cos_per_instance"] == [False]
    json.dumps(metrics, allow_nan=False)


def test_merged_features_fail_one_to_one(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms()
    # component 0 = e_0 W_0 + e_1 W_1: its rows 0 and 1 equal W_0, W_1 -> cos 1 for both features,
    # so MMCS = 1 and ML2R = 1 still, but only components {0, 2, 3, 4} are picked: 4 distinct
    metrics, _ = evaluate(cfg_factory(5), target, comps(target, MERGED), sample=no_data)
    assert metrics["mmcs"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ml2r"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["n_distinct"] == 4.0
    assert metrics["recovered"] == 0.0 and metrics["recovered_per_instance"] == [False]
    # one-hot x_1 = 1 attributes only to component 0, already matched to feature 0: feature 1's
    # matched (empty) column is 0 (1 diagonal miss) and its component-0 entry is 1 (1 off-diagonal)
    assert (metrics["identity_off_diag"], metrics["identity_diag_miss"]) == (1, 1)
    # without the one-to-one requirement the weights still fail: component 0 = M_0 + M_1 has cosine
    # |W_0| / sqrt(|W_0|^2 + |W_1|^2) = 1 / sqrt(1.81) = 0.743 with M_0, and M_1 is left an empty one
    assert judge(metrics, {"require_one_to_one": False})["recovered_all"] is False
    assert metrics["mechanism_norm_max"] == pytest.approx(math.sqrt(1.81), abs=1e-6)


def test_ml2r_scaled_components(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms()
    # every component at half length: cosines unchanged (MMCS 1), each ratio 0.5 -> ML2R 0.5 < 0.8
    metrics, _ = evaluate(cfg_factory(5), target, comps(target, PERFECT, scale=0.5), sample=no_data)
    assert metrics["mmcs"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ml2r"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["recovered"] == 0.0
    # the matched mechanisms have norm ratio 0.5 as well
    assert judge(metrics, {"ml2r_min": 0.4})["recovered"] == 0.0
    assert judge(metrics, {"ml2r_min": 0.4, "mechanism_norm_min": 0.4})["recovered"] == 1.0
    assert judge(metrics, {"ml2r_min": 0.4, "mechanism_norm_min": 0.4, "ml2r_max": 0.45})["recovered"] == 0.0


def test_scores_one_component_half_length_and_rotated():
    W = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (I=1, f=2, h=2)
    P = torch.zeros(1, 3, 2, 2)
    P[0, 0, 0] = torch.tensor([0.5, 0.0])  # feature 0 at half length: cos 1, ratio 0.5
    P[0, 2, 1] = torch.tensor([1.0, 1.0])  # feature 1 rotated by 45 deg: cos 1/sqrt2, ratio sqrt2/2
    s = tms_scores(W, P)
    assert s.mmcs.item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert s.ml2r.item() == pytest.approx((0.5 + math.sqrt(2) / 2) / 2)
    assert s.match.tolist() == [[0, 2]] and s.n_distinct.tolist() == [2]
    # a zero component row has cosine 0, not NaN
    assert feature_cosines(W, P)[0, 1].tolist() == [0.0, 0.0]


def test_several_instances_fraction(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms(n_instances=2)
    c = comps(target, PERFECT)
    with torch.no_grad():  # instance 1: features 0 and 1 merged into component 0
        merged = comps(target, MERGED)
        for name in c.A:
            c.A[name][1], c.B[name][1] = merged.A[name][1], merged.B[name][1]
    metrics, _ = evaluate(cfg_factory(5), target, c, sample=no_data)
    assert metrics["n_distinct_per_instance"] == [5, 4]
    assert metrics["n_distinct"] == 4.5
    assert metrics["recovered_per_instance"] == [True, False]
    assert metrics["recovered"] == 0.5 and metrics["recovered_all"] is False
    assert metrics["identity_error_per_instance"] == [0, 2] and metrics["identity_error"] == 2


def test_hidden_identity_layer(tms_builders, cfg_factory):
    tms, comps = tms_builders
    target = tms(n_hidden_layers=1)
    c = comps(target, PERFECT)  # hidden I split as e_0 e_0^T (comp 0) + e_1 e_1^T (comp 1)
    metrics, _ = evaluate(cfg_factory(5), target, c, sample=no_data)
    assert metrics["hidden_identity_rel_error"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["recovered"] == 1.0 and metrics["n_hidden_layers"] == 1
    # the hidden pieces live in components 0 and 1 but are not compared: mechanisms are linear1 rows
    assert metrics["mechanism_cos"] == pytest.approx(1.0)
    assert set(metrics) == set(metric_keys("tms")) - {"check_ml2r_max_per_instance"}
    with torch.no_grad():
        c.A["hidden_0"][:, 1].zero_()  # sum = diag(1, 0): |diag(0, 1)|_F / |I|_F = 1/sqrt2
    metrics, _ = evaluate(cfg_factory(5), target, c, sample=no_data)
    assert metrics["hidden_identity_rel_error_per_instance"][0] == pytest.approx(1 / math.sqrt(2))
    assert metrics["recovered"] == 0.0
    assert judge(metrics, {"identity_hidden_rel_tol": 0.75})["recovered"] == 1.0


def test_relative_frobenius_error():
    ref = torch.eye(2)[None]
    assert relative_frobenius_error(1.1 * ref, ref).item() == pytest.approx(0.1)
