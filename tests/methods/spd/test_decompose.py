"""SPD through the shared loop (`apd.decompose`): losses fall, runs resume exactly, masks use the loop's
sampling stream, and every instance is decomposed independently."""

from __future__ import annotations

import pytest
import torch

from apd.decompose import StepRecord, decompose
from apd.methods.spd import SPD
from apd.methods.spd.fast import fast_loss
from apd.methods.spd.masks import draw_noise
from apd.methods.spd.naive import naive_loss
from apd.targets.tms import TMS

from .conftest import components, sample, spd_cfg, tms_batches, trained_tms


def cfg(**kw: object):
    base = dict(C=10, n_ci_mlp_neurons=8, importance_minimality_coeff=3e-3, pnorm=1.0, lr=1e-2,
                lr_schedule="cosine", steps=40, batch_size=256, log_every=10)  # fmt: skip
    return spd_cfg(**(base | kw))


def test_losses_fall_on_a_real_decomposition() -> None:
    result = decompose(cfg(steps=300, log_every=100), trained_tms(), tms_batches(), progress=False)
    assert result.status == "finished" and [r.step for r in result.records] == [0, 100, 200, 300]
    first, last = result.records[0].losses, result.records[-1].losses
    assert set(first) == {"total_loss", "faithfulness_loss", "stochastic_recon_loss",
                          "stochastic_recon_layerwise_loss", "importance_minimality_loss"}  # fmt: skip
    assert last["total_loss"] < 0.05 * first["total_loss"]
    assert last["faithfulness_loss"] < 0.01 * first["faithfulness_loss"]  # the projection init is not faithful
    assert last["stochastic_recon_loss"] < 0.5 * first["stochastic_recon_loss"]
    assert last["stochastic_recon_layerwise_loss"] < 0.5 * first["stochastic_recon_layerwise_loss"]
    # fewer subcomponents active per sample, though active ones' CIs rise towards 1 (so the penalty may too)
    assert 0 < result.records[-1].stats["ci_l0"] < 0.8 * result.records[0].stats["ci_l0"]


def test_fast_and_naive_runs_agree_when_they_draw_the_same_masks() -> None:
    """With every sample computed (zero_rows keep) the fast step draws what the naive step draws."""
    fast = decompose(cfg(zero_rows="keep"), trained_tms(), tms_batches(), progress=False)
    naive = decompose(cfg(implementation="naive"), trained_tms(), tms_batches(), progress=False)
    for a, b in zip(fast.records, naive.records, strict=True):
        for key in a.losses:
            assert a.losses[key] == pytest.approx(b.losses[key], rel=1e-4, abs=1e-8), (a.step, key)


@pytest.mark.parametrize("tied_mode", ["aliased", "shared"])
def test_resume_from_a_snapshot_matches_an_unbroken_run(tied_mode: str) -> None:
    c = cfg(tied_mode=tied_mode)
    unbroken = decompose(c, trained_tms(), tms_batches(), progress=False)
    saved: dict = {}

    def keep(record: StepRecord) -> None:
        if record.step == 20:
            saved.update(record.state())

    decompose(c, trained_tms(), tms_batches(), on_step=keep, should_stop=lambda: bool(saved), progress=False)
    state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in saved.items()}
    resumed = decompose(c, trained_tms(), tms_batches(), state=state, progress=False)
    tail = [r for r in unbroken.records if r.step > 20]
    assert [r.step for r in resumed.records] == [r.step for r in tail]
    for a, b in zip(resumed.records, tail, strict=True):
        assert a.losses == pytest.approx(b.losses, rel=1e-6)
    for name, value in unbroken.components.state_dict().items():
        assert torch.allclose(resumed.components.state_dict()[name], value, atol=1e-6), name


def test_masks_draw_from_the_generator_the_loop_passes() -> None:
    c, target = cfg(), trained_tms()
    comps = components(c, target)
    x = sample(target, 128)
    same = [fast_loss(c, target, comps, x, torch.Generator().manual_seed(1)).total.item() for _ in range(2)]
    other = fast_loss(c, target, comps, x, torch.Generator().manual_seed(2)).total.item()
    assert same[0] == same[1] and other != same[0]
    gen = torch.Generator().manual_seed(1)
    fast_loss(c, target, comps, x, gen)
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(1).get_state())  # it was consumed


@pytest.mark.parametrize("loss", [naive_loss, fast_loss])
def test_each_instance_is_decomposed_independently(loss) -> None:
    """Instance 0 of a 2-instance run gets exactly the losses and gradients of a run on it alone."""
    both = trained_tms()
    alone = TMS(5, 2, n_instances=1)
    alone.load_state_dict({k: v[:1] for k, v in both.state_dict().items()})
    alone.eval().requires_grad_(False)
    c = cfg(zero_rows="keep") if loss is fast_loss else cfg(implementation="naive")
    comps2, comps1 = components(c, both), components(c, alone)
    with torch.no_grad():  # instance 0's components, copied into the one-instance decomposition
        for name, p in comps1.named_parameters():
            index = (slice(None), slice(0, 1)) if name.startswith("ci_") else (slice(0, 1),)
            p.copy_(dict(comps2.named_parameters())[name][index])
    x = sample(both, 128)
    noise = draw_noise(c, (3, 128, 2, c.C), torch.Generator().manual_seed(0))
    noise1 = type(noise)(*(r[:, :, :, :1] for r in (noise.stochastic, noise.layerwise)))  # type: ignore[index]
    out2 = loss(c, both, comps2, x, torch.Generator(), noise)
    out1 = loss(c, alone, comps1, x[:, :1], torch.Generator(), noise1)
    for key, value in out1.terms.items():
        assert torch.allclose(out2.terms[key][:1], value, rtol=1e-5, atol=1e-8), key
    g2 = dict(zip(dict(comps2.named_parameters()), torch.autograd.grad(out2.total, list(comps2.parameters())),
                  strict=True))  # fmt: skip
    g1 = torch.autograd.grad(out1.total, list(comps1.parameters()))
    for (name, _), grad in zip(comps1.named_parameters(), g1, strict=True):
        index = (slice(None), slice(0, 1)) if name.startswith("ci_") else (slice(0, 1),)
        assert torch.allclose(g2[name][index], grad, rtol=1e-4, atol=1e-7), name


def test_importances_are_the_lower_leaky_causal_importances_of_every_matrix() -> None:
    c, target = cfg(), trained_tms()
    comps = components(c, target)
    x = sample(target, 50)
    imp = SPD().importances(c, target, comps, x)
    assert list(imp) == ["linear1", "linear2"]
    for value in imp.values():
        assert value.shape == (50, 2, 10) and not value.requires_grad
        assert value.max() <= 1 and value.min() >= -0.01 * 20  # slightly negative at most
    assert comps.groups == {"linear1": ("linear1",), "linear2": ("linear2",)} and comps.C == 10
