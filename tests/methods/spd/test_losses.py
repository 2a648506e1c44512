"""Each SPD loss term and the stochastic masks against hand-computed values on tiny tensors (docs/spd.md §1.3-1.4)."""

import math

import pytest
import torch

from apd.methods.spd.config import SPDConfig
from apd.methods.spd.losses import divergence, faithfulness_loss, importance_minimality_loss
from apd.methods.spd.masks import draw_noise, plan_passes, stochastic_mask
from apd.methods.spd.naive import assemble
from apd.methods.spd.sigmoids import lower_leaky


def cfg(**kw: object) -> SPDConfig:
    base = dict(target={"name": "tms-5-2"}, C=2, importance_minimality_coeff=0.1, pnorm=1.0, lr=1e-3, steps=1,
                batch_size=4)  # fmt: skip
    return SPDConfig.model_validate(base | kw)


def test_faithfulness_sums_squared_residuals_over_matrices_and_divides_by_their_size() -> None:
    # 2 instances; matrix a (2x2), matrix b (1x3): N = 4 + 3 = 7 elements per instance
    wa = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    wb = torch.tensor([[[1.0, 1.0, 1.0]], [[2.0, 0.0, 0.0]]])
    sa = torch.tensor([[[1.0, 2.0], [3.0, 2.0]], [[1.0, 0.0], [0.0, -1.0]]])  # residuals: (0,0,0,2), (-1,0,0,1)
    sb = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])  # residuals: (0,0,1), (2,0,0)
    loss = faithfulness_loss({"a": wa, "b": wb}, {"a": sa, "b": sb})
    assert loss.tolist() == pytest.approx([(4 + 1) / 7, (1 + 1 + 4) / 7])


def test_tied_matrix_counts_twice() -> None:
    w = torch.tensor([[[1.0, 2.0]]])
    s = torch.tensor([[[0.0, 2.0]]])
    once = faithfulness_loss({"linear1": w}, {"linear1": s})
    twice = faithfulness_loss({"linear1": w, "linear2": w.mT}, {"linear1": s, "linear2": s.mT})
    assert once.item() == pytest.approx(1 / 2) and twice.item() == pytest.approx(2 / 4)


def test_mse_divergence_is_the_mean_over_batch_and_outputs_per_instance() -> None:
    f = torch.zeros(2, 2, 3)  # (batch, I, outputs)
    out = torch.zeros(2, 2, 3)
    out[0, 0] = torch.tensor([1.0, 2.0, 0.0])  # instance 0: squares 1 + 4 over 2 x 3 entries
    out[1, 1, 2] = 3.0  # instance 1: 9 over 6
    assert divergence(out, f).tolist() == pytest.approx([5 / 6, 9 / 6])
    # the fast step's divisor: the same sums over a batch of 4 (2 samples not computed, exactly 0)
    assert divergence(out, f, batch_size=4).tolist() == pytest.approx([5 / 12, 9 / 12])
    stacked = torch.stack([out, f])  # leading pass axis
    assert divergence(stacked, f).flatten().tolist() == pytest.approx([5 / 6, 9 / 6, 0.0, 0.0])


def test_kl_divergence_is_target_first() -> None:
    f = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax (1/4, 3/4)
    out = torch.tensor([[[0.0, 0.0]]])  # softmax (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert divergence(out, f, "kl").item() == pytest.approx(expected)


def test_importance_minimality_sums_layers_and_components_and_averages_the_batch() -> None:
    g1 = torch.tensor([[[0.5, 1.0]], [[0.0, 1.5]]])  # (batch 2, I 1, C 2)
    g2 = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
    # p = 2: (0.25 + 1 + 0 + 2.25 + 4) / 2 samples, no division by layers or components
    assert importance_minimality_loss([g1, g2], 2.0).item() == pytest.approx(7.5 / 2)
    assert importance_minimality_loss([g1, g2], 1.0, batch_size=5).item() == pytest.approx(5.0 / 5)


def test_masks_are_uniform_between_the_importance_and_one() -> None:
    g = torch.tensor([0.0, 0.25, 1.0, lower_leaky(torch.tensor(-3.0)).item()])  # the last is -0.03
    r = torch.rand(200_000, 4, generator=torch.Generator().manual_seed(0))
    m = stochastic_mask(g, r)
    assert (m >= g - 1e-7).all() and (m <= 1 + 1e-7).all()
    assert m.min(0).values[3] < 0  # the paper's lower sigmoid lets a mask dip below 0
    assert m.mean(0).tolist() == pytest.approx(((1 + g) / 2).tolist(), abs=3e-3)
    assert stochastic_mask(g, torch.zeros(4)).tolist() == pytest.approx(g.tolist())  # r = 0 keeps g
    # the reparametrisation: dm/dg = 1 - r
    gg = g.clone().requires_grad_()
    stochastic_mask(gg, torch.full((4,), 0.3)).sum().backward()
    assert gg.grad is not None and gg.grad.tolist() == pytest.approx([0.7] * 4)


def test_passes_of_a_step() -> None:
    c = cfg(n_mask_samples=2, recon_layerwise_coeff=1.0, out_recon_coeff=0.5)
    noise = draw_noise(c, (3, 4, 1, 2), torch.Generator().manual_seed(0))  # 3 matrices
    assert noise.stochastic is not None and noise.stochastic.shape == (2, 3, 4, 1, 2)
    g = torch.rand(3, 4, 1, 2)
    groups = {gr.term: gr.passes for gr in plan_passes(c, g.__getitem__, noise, 3)}
    assert list(groups) == [
        "stochastic_recon_loss", "stochastic_recon_layerwise_loss", "recon_layerwise_loss", "out_recon_loss",
    ]  # fmt: skip
    assert [p.swapped for p in groups["stochastic_recon_loss"]] == [frozenset({0, 1, 2})] * 2
    assert [sorted(p.swapped) for p in groups["stochastic_recon_layerwise_loss"]] == [[0], [1], [2]] * 2
    # layerwise passes draw their own r, not the full passes'
    assert noise.layerwise is not None and not torch.equal(noise.layerwise, noise.stochastic)
    first = groups["stochastic_recon_layerwise_loss"][4].masks[1]  # sample 1, matrix 1
    assert torch.equal(first, stochastic_mask(g[1], noise.layerwise[1, 1]))
    assert torch.equal(groups["recon_layerwise_loss"][2].masks[2], g[2])
    assert groups["out_recon_loss"][0].masks == {0: None, 1: None, 2: None}
    off = cfg(stochastic_recon_layerwise_coeff=0.0)
    assert draw_noise(off, (3, 4, 1, 2), torch.Generator()).layerwise is None


def test_total_sums_weighted_terms_over_instances() -> None:
    c = cfg(faithfulness_coeff=2.0, importance_minimality_coeff=0.5)
    terms = {"faithfulness_loss": torch.tensor([1.0, 3.0]), "importance_minimality_loss": torch.tensor([4.0, 0.0])}
    out = assemble(c, terms, torch.tensor([1.0, 2.0]))
    assert out.total.item() == pytest.approx(2 * 4 + 0.5 * 4)
    assert out.stats["ci_l0"].item() == pytest.approx(1.5)
