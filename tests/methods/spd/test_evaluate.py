"""The shared evaluation on SPD decompositions: the TMS family judges SPD's `linear1` subcomponents
exactly as it judges APD's components, and the identity pattern is scored per matrix."""

import math

import numpy as np
import torch

from apd.methods.spd import SPD
from apd.metrics import evaluate
from apd.metrics.feature_map import one_hot_inputs
from apd.metrics.identity import identity_pattern
from apd.metrics.tms import tms_scores
from apd.targets.tms import TMS

from .conftest import components, make_target, sample, spd_cfg


def test_tms_scores_and_identity_errors_per_matrix() -> None:
    target, cfg = make_target("tms-id"), spd_cfg(eval={"figures": False})
    comps = components(cfg, target)
    metrics, artifacts = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert metrics["family"] == "tms"
    s = tms_scores(target.weights()["linear1"], comps.component_weights("linear1").detach())
    assert np.allclose(metrics["mmcs_per_instance"], s.mmcs.numpy()) and "hidden_identity_rel_error" in metrics
    cis = SPD().importances(cfg, target, comps, one_hot_inputs(5, 2, "cpu"))
    assert list(cis) == ["linear1", "hidden_0", "linear2"]
    # the hidden identity is one shared mechanism: only the feature matrices are scored
    assert list(artifacts.identity) == ["linear1", "linear2"]
    errors = sum(identity_pattern(cis[g].transpose(0, 1), cfg.eval.identity_tol).error for g in ("linear1", "linear2"))
    assert metrics["identity_error_per_instance"] == errors.tolist()
    assert metrics["identity_error"] == int(errors.sum())
    assert set(metrics["identity_error_by_group"]) == {"linear1", "linear2"}
    for check in ("mmcs", "ml2r", "one_to_one", "split", "mechanism_cos", "mechanism_norm", "hidden_identity"):
        assert len(metrics[f"check_{check}_per_instance"]) == 2


def pentagon_tms() -> TMS:
    """TMS 5-2 whose five features sit at the corners of a unit pentagon (the paper's solution)."""
    t = TMS(5, 2, n_instances=1)
    angles = torch.arange(5) * 2 * math.pi / 5
    with torch.no_grad():
        t.W.copy_(torch.stack([angles.cos(), angles.sin()], dim=-1)[None])
    return t.eval().requires_grad_(False)


def hand_set_spd(target: TMS, order: list[int]) -> tuple[object, object]:
    """SPD with C 5 whose linear1 subcomponent c is feature order[c]'s row (linear2 tied), and affine
    gates `2 a - 1` that make the one-hot importances exactly the permutation."""
    cfg = spd_cfg(C=5, n_ci_mlp_neurons=0, lower_sigmoid="main", eval={"figures": False})
    comps = components(cfg, target)
    W = target.W.detach()[0]  # (5, 2)
    eye = torch.eye(5)[:, order]
    with torch.no_grad():
        comps.A["linear1"].copy_(eye[None])  # (I, f, C)
        comps.B["linear1"].copy_(W[order][None])  # (I, C, h)
        comps.A["linear2"].copy_(comps.B["linear1"].transpose(-1, -2))
        comps.B["linear2"].copy_(comps.A["linear1"].transpose(-1, -2))
        comps.ci_w.fill_(2.0)
        comps.ci_b.fill_(-1.0)
    return cfg, comps


def test_a_hand_set_solution_is_recovered_and_a_merged_one_is_not() -> None:
    target = pentagon_tms()
    cfg, comps = hand_set_spd(target, [2, 0, 4, 1, 3])
    metrics, _ = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert metrics["mmcs"] > 0.999 and abs(metrics["ml2r"] - 1) < 1e-3 and metrics["n_distinct"] == 5
    assert metrics["identity_error"] == 0
    assert metrics["recovered_per_instance"] == [True] and metrics["recovered"] == 1.0

    cfg, comps = hand_set_spd(target, [0, 0, 1, 2, 3])  # feature 4 has no subcomponent, feature 0 two
    metrics, _ = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert metrics["recovered_per_instance"] == [False]
    assert metrics["check_one_to_one_per_instance"] == [False] and metrics["check_mmcs_per_instance"] == [False]
