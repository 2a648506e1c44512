"""Subcomponents: the projection init, the stacked CI weights, TMS's tie (aliased and shared)."""

import pytest
import torch
from torch import nn

from apd.methods.spd import SPD
from apd.methods.spd.naive import naive_loss

from .conftest import components, make_target, sample, spd_cfg


@torch.no_grad()
def test_projection_init_puts_each_subcomponent_on_w_projected_onto_its_direction() -> None:
    target = make_target("tms-id")
    comps = components(spd_cfg(C=6), target)
    for layer in target.layers:
        w = target.layer_weight(layer)
        a, b = comps.factors(layer)
        assert a.shape == (2, w.shape[1], 6) and b.shape == (2, 6, w.shape[2])
        if layer.name != "linear2":  # linear2 takes linear1's numbers (the tie)
            assert torch.allclose(a.norm(dim=1), torch.ones(2, 6))
        parts = comps.layer_component_weights(layer)  # (I, C, d_in, d_out)
        # P_c = <W, u v^T> u v^T: the residual W - P_c is orthogonal to P_c
        inner = torch.einsum("i c d e, i d e -> i c", parts, w) - parts.pow(2).sum(dim=(-2, -1))
        assert inner.abs().max() < 1e-5
    a1, b1 = comps.factors("linear1")
    a2, b2 = comps.factors("linear2")
    assert torch.equal(a2, b1.mT) and torch.equal(b2, a1.mT)
    # CI MLPs: w_in ~ N(0, 2), w_out ~ N(0, 1/d_gate), zero biases, stacked over the 3 matrices
    assert comps.ci_w_in.shape == (3, 2, 6, 3) and comps.ci_b_out.shape == (3, 2, 6)
    assert comps.ci_b_in.abs().sum() == 0 and comps.ci_b_out.abs().sum() == 0


def test_init_is_drawn_from_the_generator_and_does_not_depend_on_the_tie_mode() -> None:
    target = make_target("tms")
    a = components(spd_cfg(), target, seed=3)
    b = components(spd_cfg(tied_mode="shared"), target, seed=3)
    c = components(spd_cfg(), target, seed=4)
    assert torch.equal(a.A["linear1"], b.A["linear1"]) and torch.equal(a.ci_w_in, b.ci_w_in)
    assert not torch.equal(a.A["linear1"], c.A["linear1"])
    assert set(b.A) == {"linear1"} and set(a.A) == {"linear1", "linear2"}


def test_normal_init_scales() -> None:
    target = make_target("resid1")
    comps = components(spd_cfg(C=64, init="normal"), target)
    a, b = comps.factors("mlp_in_0")  # d_in 32, C 64
    assert a.std().item() == pytest.approx(32**-0.5, rel=0.1) and b.std().item() == pytest.approx(64**-0.5, rel=0.1)


def test_faithfulness_warmup_makes_the_subcomponents_sum_to_the_weights() -> None:
    target = make_target("resid1")
    cold = components(spd_cfg(init="normal"), target)
    warm = components(spd_cfg(init="normal", faithfulness_warmup_steps=200), target)
    for layer in target.layers:
        w = target.layer_weight(layer)
        assert (warm.layer_weight(layer) - w).norm() < 0.2 * (cold.layer_weight(layer) - w).norm()


def code_style_aliased(comps) -> tuple[list[nn.Parameter], dict[str, nn.Parameter]]:
    """The paper code's tie: linear2's factors are Parameters over linear1's storage (two Adam states)."""
    a1 = nn.Parameter(comps.A["linear1"].detach().clone())
    b1 = nn.Parameter(comps.B["linear1"].detach().clone())
    a2 = nn.Parameter(b1.data.mT)  # aliases b1's numbers
    b2 = nn.Parameter(a1.data.mT)
    return [a1, b1, a2, b2], {"A.linear1": a1, "B.linear1": b1, "A.linear2": a2, "B.linear2": b2}


def test_aliased_tie_applies_both_adam_updates_like_the_codes_aliased_parameters() -> None:
    target = make_target("tms")
    cfg = spd_cfg()
    comps = components(cfg, target)
    method = SPD()
    factors = [comps.A["linear1"], comps.B["linear1"], comps.A["linear2"], comps.B["linear2"]]
    ours = torch.optim.AdamW(factors, lr=0.05, weight_decay=0.0)
    ref_params, ref = code_style_aliased(comps)
    theirs = torch.optim.AdamW(ref_params, lr=0.05, weight_decay=0.0, foreach=False)
    for step in range(3):
        method.before_step(cfg, comps)
        grads = torch.autograd.grad(naive_loss(cfg, target, comps, sample(target, 32, step), torch.Generator()).total,
                                    factors)  # fmt: skip
        for p, g in zip(factors, grads, strict=True):
            p.grad = g
        for p, g in zip(ref_params, grads, strict=True):
            p.grad = g.clone()
        method.after_backward(cfg, comps)
        ours.step()
        theirs.step()
    method.before_step(cfg, comps)
    for key, p in ref.items():
        kind, name = key.split(".")
        assert torch.allclose(getattr(comps, kind)[name], p, atol=1e-6), key
    # the double update really happened: both gradients moved linear1's numbers
    assert torch.equal(comps.A["linear2"], comps.B["linear1"].mT)


def test_shared_tie_sums_the_gradients_of_both_uses() -> None:
    target = make_target("tms")
    aliased, shared = components(spd_cfg(), target), components(spd_cfg(tied_mode="shared"), target)
    x = sample(target, 32)
    noise_gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ga = torch.autograd.grad(naive_loss(spd_cfg(), target, aliased, x, noise_gen()).total,
                             [aliased.A["linear1"], aliased.B["linear2"]])  # fmt: skip
    gs = torch.autograd.grad(naive_loss(spd_cfg(tied_mode="shared"), target, shared, x, noise_gen()).total,
                             [shared.A["linear1"]])  # fmt: skip
    assert torch.allclose(gs[0], ga[0] + ga[1].mT, atol=1e-6)
    assert len(list(shared.parameters())) == len(list(aliased.parameters())) - 2


def test_layers_compute_masked_subcomponents() -> None:
    target = make_target("file")
    comps = components(spd_cfg(), target)
    layer = target.layers[1]
    x = torch.randn(7, 2, 5)
    mask = torch.rand(7, 2, 4)
    a, b = comps.factors(layer)
    expected = torch.einsum("b i c, i c e -> b i e", torch.einsum("b i d, i d c -> b i c", x, a) * mask, b)
    assert torch.allclose(comps.layer_fn(layer, mask)(x), expected, atol=1e-6)
    assert torch.allclose(comps.layer_fns(target.layers, {layer.name: mask, "layer_0": mask, "layer_2": mask})[
        layer.name](x), expected, atol=1e-6)  # fmt: skip
    full = torch.einsum("b i d, i d e -> b i e", x, comps.layer_weight(layer))
    assert torch.allclose(comps.layer_fn(layer)(x), full, atol=1e-5)
