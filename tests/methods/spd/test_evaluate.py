"""The shared evaluation on SPD decompositions (phase 1): one identity pattern per matrix, summed;
TMS scores from linear1's subcomponents; residual-MLP family metrics only for single-group methods."""

import numpy as np
import torch

from apd.methods.spd import SPD
from apd.metrics import evaluate, family_of
from apd.metrics.feature_map import one_hot_inputs
from apd.metrics.identity import identity_pattern
from apd.metrics.tms import tms_scores

from .conftest import components, make_target, sample, spd_cfg


def test_tms_scores_and_summed_identity_errors() -> None:
    target, cfg = make_target("tms-id"), spd_cfg(eval={"figures": False})
    comps = components(cfg, target)
    metrics, artifacts = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert family_of(metrics) == "tms"
    s = tms_scores(target.weights()["linear1"], comps.component_weights("linear1").detach())
    assert np.allclose(metrics["mmcs_per_instance"], s.mmcs.numpy()) and "hidden_identity_rel_error" in metrics
    cis = SPD().importances(cfg, target, comps, one_hot_inputs(5, 2, "cpu"))
    assert list(cis) == ["linear1", "hidden_0", "linear2"]
    errors = sum(identity_pattern(ci.transpose(0, 1), cfg.eval.identity_tol).error for ci in cis.values())
    assert metrics["identity_error_per_instance"] == errors.tolist()
    assert metrics["identity_error"] == int(errors.sum())
    assert artifacts["onehot_attributions"].shape == (2, 5, 4)  # the first matrix's pattern is drawn


def test_residual_mlp_gets_the_generic_verdict() -> None:
    target, cfg = make_target("resid2"), spd_cfg(eval={"figures": False, "scrub_batches": 2})
    comps = components(cfg, target)
    with torch.no_grad():
        metrics, _ = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert family_of(metrics) == "generic" and "dedicated_fraction" not in metrics
    assert len(metrics["recovered_per_instance"]) == 2
