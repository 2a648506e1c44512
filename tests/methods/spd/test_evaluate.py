"""The shared evaluation on SPD decompositions: the TMS family judges SPD's `linear1` subcomponents
exactly as it judges APD's components, and the identity pattern is scored per matrix."""

import math
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# residual MLP, one component group per matrix


def test_target_solution_patterns_count_by_hand() -> None:
    from apd.metrics.target_solution import dense_error, identity_error

    ci = torch.tensor([[[0.0, 1.0, 0.0, 0.05], [0.95, 0.0, 0.0, 0.0], [0.0, 0.3, 0.85, 0.15]]])  # (1, 3 features, 4)
    # matched diagonal 1.0, 0.95, 0.85 (one miss at tol 0.1); off it 0.3 and 0.15 (two)
    assert identity_error(ci, 0.1).tolist() == [3]
    assert identity_error(ci, 0.2).tolist() == [1]  # 0.3 only
    dense = torch.tensor([[[1.0, 1.0, 0.0], [0.95, 0.5, 0.0], [1.0, 1.0, 0.15]]])
    assert dense_error(dense, 2, 0.1).tolist() == [1]  # columns 0, 1 dense (each has a 1); 0.15 in the rest
    assert dense_error(dense, 3, 0.1).tolist() == [1]  # column 2 has no entry >= 0.9
    assert dense_error(dense, 5, 0.1).tolist() == [3]  # and two dense columns do not exist


def test_contribution_fit() -> None:
    from apd.targets.resid_mlp import contribution_fit

    t = torch.randn(2, 6, 8)
    r, slope = contribution_fit(t, torch.stack([t[0], 2 * t[1]]))
    assert torch.allclose(r, torch.ones(2)) and torch.allclose(slope, torch.tensor([1.0, 2.0]))


def hand_set_resid(shared: bool) -> tuple[object, object, object]:
    """A 1-layer residual MLP (6 features, orthonormal W_E, every feature read and written by its neurons)
    and SPD with C 6: W_in subcomponent c reads feature c (or, `shared`, features 0 and 1 share subcomponent
    0), W_out one subcomponent per neuron, the gates set so the one-hot importances are the identity on
    W_in and 4 dense columns on W_out."""
    from apd.metrics.target_solution import ONE_HOT_VALUE

    torch.manual_seed(0)
    target = make_target("resid1")  # ResidMLP(6, 32, 4), 2 instances
    q = torch.linalg.qr(torch.randn(2, 32, 6)).Q.transpose(-1, -2)  # (I, 6, 32) orthonormal rows
    target.W_E.copy_(q)
    with torch.no_grad():  # W_out writes each neuron back onto the features it reads: contributions >= 0
        target.mlp_out[0].copy_(torch.einsum("i f d, i d n, i f e -> i n e", q, target.mlp_in[0], q))
    cfg = spd_cfg(target={"name": "resid-mlp-1"}, C=6, n_ci_mlp_neurons=0, lower_sigmoid="main",
                  eval={"figures": False, "scrub_batches": 1})  # fmt: skip
    comps = components(cfg, target)
    w_in, w_out = target.weights()["mlp_in_0"], target.weights()["mlp_out_0"]
    reads = [0, 0, 2, 3, 4, 5] if shared else list(range(6))
    with torch.no_grad():
        A_in = q.transpose(-1, -2)[:, :, reads].clone()  # (I, 32, C): subcomponent c reads feature reads[c]
        if shared:
            A_in[:, :, 0] += q[:, 1]
        comps.A["mlp_in_0"].copy_(A_in)
        comps.B["mlp_in_0"].copy_(torch.einsum("i d c, i d n -> i c n", comps.A["mlp_in_0"], w_in))
        comps.A["mlp_out_0"].copy_(torch.eye(4, 6).expand(2, 4, 6))
        comps.B["mlp_out_0"].copy_(torch.cat([w_out, torch.zeros(2, 2, 32)], dim=1))
        comps.ci_w[0].fill_(1 / ONE_HOT_VALUE)
        comps.ci_b[0].zero_()
        comps.ci_w[1].zero_()
        comps.ci_b[1].copy_(torch.tensor([1.0, 1, 1, 1, -1, -1]))
    return cfg, target, comps


def test_a_hand_set_residual_solution_is_recovered_and_a_shared_one_is_not() -> None:
    cfg, target, comps = hand_set_resid(shared=False)
    metrics, data = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert metrics["family"] == "resid_mlp" and metrics["n_component_groups"] == 2
    assert metrics["target_solution_error_per_instance"] == [0, 0]
    assert metrics["target_solution_error_by_group"] == {"mlp_in_0": 0, "mlp_out_0": 0}
    assert np.allclose(metrics["contribution_r_per_instance"], 1, atol=1e-5)
    assert np.allclose(metrics["contribution_slope_per_instance"], 1, atol=1e-5)
    assert metrics["recovered_per_instance"] == [True, True]
    assert "check_dedicated_per_instance" not in metrics  # APD's checks do not apply to per-matrix groups
    assert data.family.best.shape == (2, 1, 6)

    cfg, target, comps = hand_set_resid(shared=True)
    metrics, _ = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert metrics["check_target_solution_per_instance"] == [False, False]
    assert metrics["recovered_per_instance"] == [False, False]


def test_residual_figures_per_matrix(tmp_path: Path) -> None:
    from apd.figures import make_figures

    cfg, target, comps = hand_set_resid(shared=False)
    metrics, artifacts = evaluate(cfg, target, comps, sample=lambda n: sample(target, n))
    assert set(artifacts.onehot) == {"mlp_in_0", "mlp_out_0"} and artifacts.onehot["mlp_in_0"].shape == (2, 6, 6)
    names = {p.name for p in make_figures(target, comps, metrics, artifacts, tmp_path)}
    for i in (0, 1):
        assert {f"ci_mlp_in_0_inst{i}.png", f"ci_mlp_out_0_inst{i}.png"} <= names
        assert {f"resid_contribution_scatter_inst{i}.png", f"resid_contributions_inst{i}.png"} <= names
    assert all((tmp_path / name).stat().st_size > 0 for name in names)
