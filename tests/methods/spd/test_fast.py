"""The fast step (`apd.methods.spd.fast`) against the reference step (`naive`), with the same draws.

Every target family (TMS with and without the hidden identity, both tie modes; 1- and 2-layer residual
MLPs in folded coordinates and through the generic path; the gated model; a user linear stack), with
and without skipping all-zero samples: every loss term and the gradient of the total w.r.t. every
parameter agree to float tolerance.
"""

from __future__ import annotations

import pytest
import torch

import apd.methods.spd.fast as fast
from apd.methods.spd import SPDComponents, SPDConfig
from apd.methods.spd.fast import fast_loss
from apd.methods.spd.masks import draw_noise
from apd.methods.spd.naive import naive_loss
from apd.targets.base import Target

from .conftest import FAMILIES, components, make_target, sample, spd_cfg

ALL_TERMS = dict(n_mask_samples=2, recon_coeff=0.5, recon_layerwise_coeff=0.3, out_recon_coeff=0.2, pnorm=0.7)


def assert_same_step(cfg: SPDConfig, target: Target, comps: SPDComponents, x: torch.Tensor) -> None:
    gen = torch.Generator(device=x.device).manual_seed(3)
    noise = draw_noise(cfg, (len(target.layers), x.shape[0], x.shape[1], cfg.C), gen)
    params = list(comps.parameters())
    ref = naive_loss(cfg, target, comps, x, torch.Generator(), noise=noise)
    ref_grads = torch.autograd.grad(ref.total, params)
    for zero_rows in ("keep", "skip"):
        out = fast_loss(cfg.model_copy(update={"zero_rows": zero_rows}), target, comps, x, torch.Generator(), noise)
        assert out.terms.keys() == ref.terms.keys()
        for key, value in ref.terms.items():
            assert torch.allclose(out.terms[key], value, rtol=1e-5, atol=1e-7), (zero_rows, key)
        assert torch.allclose(out.total, ref.total, rtol=1e-5)
        assert torch.allclose(out.stats["ci_l0"], ref.stats["ci_l0"])
        grads = torch.autograd.grad(out.total, params)
        for p, g, r in zip(params, grads, ref_grads, strict=True):
            scale = r.abs().max().clamp_min(1e-6)
            assert (g - r).abs().max() / scale < 1e-4, (zero_rows, p.shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_step_equals_the_reference_step(family: str) -> None:
    target = make_target(family)
    cfg = spd_cfg()
    assert_same_step(cfg, target, components(cfg, target), sample(target, 64))


@pytest.mark.parametrize("family", ["tms-id", "resid2", "file"])
def test_every_optional_term_and_variant(family: str) -> None:
    target = make_target(family)
    cfg = spd_cfg(**ALL_TERMS, lower_sigmoid="main", output_loss_type="kl")
    assert_same_step(cfg, target, components(cfg, target), sample(target, 48))


@pytest.mark.parametrize("variant", [dict(tied_mode="shared"), dict(n_ci_mlp_neurons=0), dict(faithfulness_coeff=None)])
def test_tie_modes_gates_and_skipped_terms(variant: dict) -> None:
    target = make_target("tms-id")
    cfg = spd_cfg(**ALL_TERMS, **variant)
    assert_same_step(cfg, target, components(cfg, target), sample(target, 48))


def test_trained_components_too() -> None:
    """After some steps the CI functions are far from their init (masks near 0 and 1)."""
    target = make_target("resid2")
    cfg = spd_cfg(lr=0.05)
    comps = components(cfg, target)
    opt = torch.optim.AdamW(comps.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in range(30):
        out = fast_loss(cfg, target, comps, sample(target, 64, seed=10 + step), torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert_same_step(cfg, target, comps, sample(target, 64))


def test_zero_rows_are_skipped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    target = make_target("tms")
    x = sample(target, 64)
    x[:40] = 0  # at least 40 all-zero samples per instance
    seen = []
    kept = fast.kept_rows
    monkeypatch.setattr(fast, "kept_rows", lambda active: seen.append(kept(active)) or seen[-1])
    cfg = spd_cfg(zero_rows="skip")
    comps = components(cfg, target)
    fast_loss(cfg, target, comps, x, torch.Generator())
    assert seen and seen[0].shape[0] <= 24 and seen[0].shape[1] == 2
    assert_same_step(cfg, target, comps, x)
    x[:] = 0  # nothing to compute: one padded sample, the whole loss from the CI at 0
    assert_same_step(cfg, target, comps, x)


def test_zero_rows_auto_skips_on_the_cpu_only() -> None:
    cfg = spd_cfg()
    assert fast.skip_zero_rows(cfg, torch.device("cpu"))
    assert not fast.skip_zero_rows(cfg, torch.device("cuda"))
    assert fast.skip_zero_rows(spd_cfg(zero_rows="skip"), torch.device("cuda"))


def test_compiled_ci_functions_give_the_reference_step() -> None:
    target = make_target("tms")
    cfg = spd_cfg(compile=True)
    assert_same_step(cfg, target, components(cfg, target), sample(target, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["tms-id", "resid2", "gated"])
def test_fast_step_equals_the_reference_step_on_cuda(family: str) -> None:
    target = make_target(family).cuda()
    cfg = spd_cfg(**ALL_TERMS)
    comps = components(cfg, target).cuda()
    assert_same_step(cfg, target, comps, sample(target, 64).cuda())
