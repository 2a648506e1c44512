import sys

import pytest
import torch
from torch import Tensor

from apd.methods.apd.components import Components
from apd.methods.apd.losses import (
    act_recon_loss,
    faithfulness_loss,
    lp_sparsity_loss,
    lp_weights,
    schatten_loss,
    topk_recon_loss,
)
from apd.methods.apd.losses.param_terms import param_terms
from apd.targets.base import Layer

W = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1 instance, 2, 2)


def zero_components(C: int = 2, m: int = 2) -> Components:
    comps = Components({"w": (2, 2)}, n_instances=1, C=C, m=m)
    for p in comps.parameters():
        p.data.zero_()
    return comps


def test_faithfulness_zero_when_components_sum_to_weights() -> None:
    comps = zero_components()
    # P_0 = W (A = W, B = I), P_1 = 0
    comps.A["w"].data[0, 0] = W[0]
    comps.B["w"].data[0, 0] = torch.eye(2)
    loss = faithfulness_loss({"w": W}, comps, (Layer("w", "w"),))
    assert loss.shape == (1,)
    assert loss.item() == 0.0


def test_faithfulness_hand_computed() -> None:
    comps = zero_components()
    # residual W - 0: sum of squares 1 + 4 + 9 + 16 = 30 over 4 elements -> 7.5
    assert faithfulness_loss({"w": W}, comps, (Layer("w", "w"),)).item() == pytest.approx(7.5)
    # a tied layer counts twice in the sum and in n_params: 60 / 8 = 7.5; unnormalised: 60
    tied = (Layer("w", "w"), Layer("wT", "w", transposed=True))
    assert faithfulness_loss({"w": W}, comps, tied).item() == pytest.approx(7.5)
    assert faithfulness_loss({"w": W}, comps, tied, norm="sum").item() == pytest.approx(60.0)


def test_topk_recon_hand_computed() -> None:
    out = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])  # (batch 2, 1 instance, 2 outputs)
    target = torch.zeros_like(out)
    # squared errors 1, 4, 0, 0 -> mean 1.25
    assert topk_recon_loss(out, target).tolist() == [1.25]


def test_act_recon_applies_relu_before_comparing() -> None:
    h_topk = [torch.tensor([[[-1.0, 2.0]]])]  # (batch 1, 1 instance, 2 neurons)
    h_target = [torch.tensor([[[1.0, 1.0]]])]
    # ReLU: (0, 2) vs (1, 1): (1 + 1) / 2 neurons = 1.0; without ReLU: (4 + 1) / 2 = 2.5
    assert act_recon_loss(h_topk, h_target, relu=True).tolist() == [1.0]
    assert act_recon_loss(h_topk, h_target, relu=False).tolist() == [2.5]


def test_schatten_hand_computed() -> None:
    comps = zero_components(C=1, m=2)
    comps.A["w"].data[0, 0, :, 0] = torch.tensor([3.0, 4.0])  # |A_:,0| = 5
    comps.B["w"].data[0, 0, 0, :] = torch.tensor([1.0, 0.0])  # |B_0,:| = 1
    mask = torch.ones(2, 1, 1)  # batch 2, always active
    # p = 1: per component (25 * 1 + 1e-16)^0.5 + (0 + 1e-16)^0.5 = 5 + 1e-8
    # summed over batch (x2) and divided by n_params * batch = 4 * 2 -> 1.25
    loss = schatten_loss(comps, (Layer("w", "w"),), mask, p=1.0, n_params=4)
    assert loss.item() == pytest.approx(1.25, abs=1e-7)
    # p = 0.5: 25^0.25 = sqrt(5)
    loss = schatten_loss(comps, (Layer("w", "w"),), mask, p=0.5, n_params=4)
    assert loss.item() == pytest.approx(5**0.5 * 2 / 8, abs=1e-4)
    # inactive components cost nothing
    assert schatten_loss(comps, (Layer("w", "w"),), torch.zeros(2, 1, 1), p=1.0, n_params=4).item() == 0.0


def test_schatten_counts_tied_layer_twice() -> None:
    comps = zero_components(C=1, m=2)
    comps.A["w"].data[0, 0, :, 0] = torch.tensor([3.0, 4.0])
    comps.B["w"].data[0, 0, 0, :] = torch.tensor([1.0, 0.0])
    mask = torch.ones(1, 1, 1)
    tied = (Layer("w", "w"), Layer("wT", "w", transposed=True))
    one = schatten_loss(comps, tied[:1], mask, p=1.0, n_params=4).item()
    assert schatten_loss(comps, tied, mask, p=1.0, n_params=4).item() == pytest.approx(2 * one)


def test_lp_sparsity_hand_computed() -> None:
    attr = torch.tensor([[[4.0, 0.0]], [[16.0, 4.0]]])  # (batch 2, 1 instance, C 2), d_L = 4
    w = lp_weights(attr, pnorm=1.0, n_outputs=4)
    # (attr / 4)^(1/2): [[1, 0], [2, 1]] (+ tiny eps)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 1e-8]], [[2.0, 1.0]]]), atol=1e-6, rtol=0)
    # mean over batch of the sum over C: (1 + 3) / 2 = 2
    assert lp_sparsity_loss(w).item() == pytest.approx(2.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The fast step's fused faithfulness + Schatten node


def test_param_terms_hand_computed() -> None:
    comps = zero_components(C=1, m=2)
    comps.A["w"].data[0, 0, :, 0] = torch.tensor([3.0, 4.0])  # |A_:,0| = 5
    comps.B["w"].data[0, 0, 0, :] = torch.tensor([1.0, 0.0])  # |B_0,:| = 1
    # P = A B = [[3, 0], [4, 0]]; W - P = [[-2, 2], [-1, 4]]: 4 + 4 + 1 + 16 = 25
    # Schatten p = 1: (25 * 1 + 1e-16)^0.5 + (0 + 1e-16)^0.5 = 5 + 1e-8
    sq, norms, factors = param_terms({"w": W}, comps, (Layer("w", "w"),), faithfulness=True, schatten_p=1.0)
    assert sq.tolist() == [25.0]
    assert norms.tolist() == [pytest.approx([5.0], abs=1e-7)]
    assert factors["w"][0].shape == comps.A["w"].shape
    # a tied layer counts twice in both
    tied = (Layer("w", "w"), Layer("wT", "w", transposed=True))
    sq, norms, _ = param_terms({"w": W}, comps, tied, faithfulness=True, schatten_p=1.0)
    assert sq.tolist() == [50.0]
    assert norms.tolist() == [pytest.approx([10.0], abs=1e-7)]
    # terms that are off cost nothing and come back as zeros
    sq, norms, _ = param_terms({"w": W}, comps, tied, faithfulness=False, schatten_p=None)
    assert sq.tolist() == [0.0] and norms.tolist() == [[0.0]]


@pytest.mark.parametrize("p", [1.0, 0.9])
@pytest.mark.parametrize("path", ["one chunk", "chunks and a loop over instances"])
@pytest.mark.parametrize("tied", [False, True])
def test_param_terms_values_and_gradients_match_the_plain_terms(
    p: float, path: str, tied: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against `faithfulness_loss` and the per-component norms of `schatten_loss`, with other terms' gradients
    arriving through the aliases; the second path takes one component per chunk and loops over instances."""
    if path != "one chunk":
        monkeypatch.setattr("apd.methods.apd.components.CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(sys.modules["apd.methods.apd.losses.param_terms"], "SMALL", 0)
    gen = torch.Generator().manual_seed(0)
    shapes = {"u": (5, 3), "v": (3, 4)}
    comps = Components(shapes, n_instances=2, C=3, m=2, generator=gen)
    layers = (Layer("u", "u"), Layer("v", "v")) + ((Layer("uT", "u", transposed=True),) if tied else ())
    weights = {name: torch.randn(2, *shape, generator=gen) for name, shape in shapes.items()}
    mix = torch.rand(2, 3, generator=gen)  # weights the per-component norms
    probes = {name: torch.randn(2, 3, *shape, generator=gen) for name, shape in shapes.items()}

    def plain() -> tuple[Tensor, Tensor, Tensor]:
        sq = faithfulness_loss(weights, comps, layers, norm="sum")
        norms = sum(
            ((comps.factors(layer)[0].pow(2).sum(-2) * comps.factors(layer)[1].pow(2).sum(-1)) + 1e-16)
            .pow(p / 2)
            .sum(-1)
            for layer in layers
        )
        other = sum((comps.weight(name) * probe).sum() for name, probe in probes.items())
        return sq, norms, other  # type: ignore[return-value]

    def fused() -> tuple[Tensor, Tensor, Tensor]:
        sq, norms, factors = param_terms(weights, comps, layers, faithfulness=True, schatten_p=p)
        other = sum((factors[name][0] @ factors[name][1] * probe).sum() for name, probe in probes.items())
        return sq, norms, other  # type: ignore[return-value]

    results = []
    for fn in (plain, fused):
        comps.zero_grad(set_to_none=True)
        sq, norms, other = fn()
        (sq.sum() + (mix * norms).sum() + other).backward()
        results.append([sq.detach(), norms.detach(), *(q.grad.clone() for q in comps.parameters())])  # type: ignore[union-attr]
    for expected, actual in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
