"""Residual-MLP metrics on a tiny hand-set model with one neuron per feature."""

from __future__ import annotations

import json

import pytest
import torch

from apd.metrics import evaluate, judge, metric_keys
from apd.metrics.contributions import neuron_contributions, polysemanticity, represented_features
from apd.metrics.feature_map import dedicated_features, dedicated_not_mono
from apd.metrics.per_feature import per_feature_sums, single_active_feature
from apd.metrics.scrub import forced_components, scrub_masks
from apd.targets.resid_mlp import PER_MATRIX_KEYS

PERFECT = [[0], [1], [2], [3], [4], [5]]  # component 6 is left empty (dead)
MERGED = [[0, 1], [], [2], [3], [4], [5]]


def test_perfect_decomposition(resid_builders, cfg_factory, sampler_factory):
    model_fn, comps_fn = resid_builders
    model = model_fn()
    metrics, art = evaluate(cfg_factory(7), model, comps_fn(model, PERFECT), sample=sampler_factory())
    # contributions: component c holds neuron c only: (W_E W_in_c)[f, n] = [f = n = c] and
    # (W_out_c W_E^T)[n, f] = 0.8 [n = f = c] -> 0.8 at (f = c, n = c), else 0: six mono, one dead
    assert (metrics["n_mono"], metrics["n_duo"], metrics["n_poly"], metrics["n_dead"]) == (6, 0, 0, 1)
    assert metrics["n_represented"] == 6
    assert torch.allclose(torch.tensor(art.family.contrib_target[0]), 0.8 * torch.eye(6), atol=1e-6)
    # one-hot x_f = 1 only reaches component f: identity feature map, all dedicated
    assert art.family.feature_map.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert metrics["dedicated_fraction"] == 1.0 and metrics["n_dedicated_not_mono"] == 0
    assert metrics["identity_error"] == 0
    # top-1 output equals the target output (component f reproduces neuron f): ratio ~ 0
    assert metrics["median_norm_top1_mse"] < 1e-6
    # target vs labels on x_f = v > 0: (0.2 v)^2 / 6 outputs; E over v ~ U[-1, 1] = 0.04 / 3 / 6 / 2
    pf = art.family.per_feature_mse["target_vs_labels"][0]
    assert pf.mean() == pytest.approx(0.04 / 36, rel=0.35)
    # scrubbing keeps the active features' components: orthonormal W_E leaves nothing else -> ~0
    assert metrics["scrubbed_loss"] < 1e-9 and metrics["anti_scrubbed_loss"] > 1e-3
    assert metrics["scrub_ratio"] >= 10
    assert metrics["recovered"] == 1.0 and metrics["recovered_all"] is True
    per_matrix = {
        *PER_MATRIX_KEYS,
        *(f"check_{c}_per_instance" for c in ("target_solution", "contribution_r", "contribution_slope")),
    }
    assert set(metrics) == set(metric_keys("resid_mlp")) - per_matrix  # those are for components grouped per matrix
    json.dumps(metrics, allow_nan=False)


def test_merged_decomposition(resid_builders, cfg_factory, sampler_factory):
    model_fn, comps_fn = resid_builders
    model = model_fn()
    metrics, art = evaluate(cfg_factory(7), model, comps_fn(model, MERGED), sample=sampler_factory())
    # component 0 represents features 0 and 1 (0.8 each): duo; components 1 and 6 empty: dead
    assert (metrics["n_mono"], metrics["n_duo"], metrics["n_poly"], metrics["n_dead"]) == (4, 1, 0, 2)
    # features 0 and 1 both map to component 0: 4 of 6 dedicated
    assert art.family.feature_map.tolist() == [[0, 0, 2, 3, 4, 5]]
    assert metrics["dedicated_fraction"] == pytest.approx(4 / 6)
    assert metrics["n_dedicated_not_mono"] == 0
    assert (metrics["identity_off_diag"], metrics["identity_diag_miss"]) == (1, 1)
    assert metrics["recovered"] == 0.0 and metrics["recovered_all"] is False
    assert metrics["check_dedicated_per_instance"] == [False] and metrics["check_scrub_ratio_per_instance"] == [True]
    # re-judged with a lower dedicated threshold, the stored numbers pass
    assert judge(metrics, {"dedicated_min": 0.6})["recovered"] == 1.0
    assert judge(metrics, {"dedicated_min": 0.6, "scrub_ratio_min": 1e30})["recovered"] == 0.0


def test_explicit_label_function(resid_builders, cfg_factory, sampler_factory):
    model_fn, comps_fn = resid_builders
    model = model_fn()
    comps = comps_fn(model, PERFECT)
    _, default = evaluate(cfg_factory(7), model, comps, sample=sampler_factory())
    # labels x + 0.5 ReLU(x): the target (x + 0.8 ReLU(x)) misses them by 0.3 ReLU(x) instead of
    # 0.2 ReLU(x), on the same samples: per-feature MSE ratio (0.3 / 0.2)^2 = 2.25
    _, half = evaluate(cfg_factory(7), model, comps, sample=sampler_factory(), labels=lambda x: x + 0.5 * torch.relu(x))
    ratio = half.family.per_feature_mse["target_vs_labels"] / default.family.per_feature_mse["target_vs_labels"]
    assert ratio[0].tolist() == pytest.approx([2.25] * 6, rel=1e-4)


def test_contribution_helpers():
    # one layer, 2 features, d_embed 2 (W_E = I), 3 neurons; a neuron shared by both features
    w_e = torch.eye(2)[None]
    w_in = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])  # (d, n)
    w_out = torch.tensor([[0.3, 0.0], [0.0, 0.02], [0.4, 0.4]])  # (n, d)
    contrib = neuron_contributions(w_e, [w_in[None, None]], [w_out[None, None]])  # (1, 1, 2, 3)
    # contrib[f, n] = w_in[f, n] * w_out[n, f]
    torch.testing.assert_close(contrib[0, 0], torch.tensor([[0.3, 0.0, 0.2], [0.0, 0.02, 0.2]]))
    rep = represented_features(contrib, cutoff=0.04)  # maxima 0.3 and 0.2 both pass
    assert rep.tolist() == [[[True, True]]]
    assert polysemanticity(rep).n_duo.tolist() == [1]


def test_dedicated_not_mono_counts_components_of_other_features():
    fmap = torch.tensor([[0, 1, 2]])
    represents = torch.tensor([[[True, False, False], [True, True, False], [False, False, False]]])
    dedicated = dedicated_features(fmap, 3)
    assert dedicated.tolist() == [[True, True, True]]
    # comp 0 mono for feature 0 (ok); comp 1 duo (bad); comp 2 represents nothing (bad)
    assert dedicated_not_mono(fmap, dedicated, represents).tolist() == [2]


def test_scrub_masks_force_owners():
    x = torch.tensor([[[0.5, 0.0, -0.2]], [[0.0, 0.0, 0.0]]])  # (batch 2, I 1, f 3)
    fmap = torch.tensor([[1, 0, 3]])  # features -> components of C = 4
    forced = forced_components(x, fmap, 4)
    assert forced.tolist() == [[[False, True, False, True]], [[False, False, False, False]]]
    keep = torch.tensor([[[True, False, True, True]], [[True, False, False, True]]])
    scrub, anti = scrub_masks(keep, forced)
    assert scrub.tolist() == [[[True, True, True, True]], [[True, False, False, True]]]
    assert anti.tolist() == [[[True, False, True, False]], [[True, False, False, True]]]


def test_per_feature_sums():
    x = torch.tensor([[[0.0, 0.3]], [[0.1, 0.2]], [[0.0, -0.4]], [[0.5, 0.0]]])
    single, feature = single_active_feature(x)
    assert single[:, 0].tolist() == [True, False, True, True]
    values = torch.tensor([[1.0], [100.0], [3.0], [5.0]])
    sums, counts = per_feature_sums(values, feature, single, 2)
    assert sums.tolist() == [[5.0, 4.0]] and counts.tolist() == [[1.0, 2.0]]
