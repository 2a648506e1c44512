"""Gradient attributions equal a brute-force per-sample directional derivative."""

import pytest
import torch

from apd.methods.apd.attributions import attributions
from apd.methods.apd.components import Components
from apd.methods.apd.fast import fast_attributions
from apd.targets.base import Target
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS


def brute_force(target: Target, comps: Components, x: torch.Tensor) -> torch.Tensor:
    """attr_c(x_b) = sum_o (sum_params <d f_o(x_b) / d W, P_c>)^2, one autograd call per (b, o).

    Differentiating with respect to the *parameter* covers tied layers automatically (TMS linear2
    uses W^T, so d f / d W sums both uses, matching component c's P_c and P_c^T).
    """
    weights = target.weights()
    batch, n_inst = x.shape[:2]
    attr = torch.zeros(batch, n_inst, comps.C)
    for b in range(batch):
        params = {name: w.detach().clone().requires_grad_() for name, w in weights.items()}
        originals = dict(weights)
        for name, p in params.items():  # swap the live parameters for differentiable copies
            _set(target, name, p)
        out = target(x[b : b + 1])
        for i in range(n_inst):
            for o in range(out.shape[-1]):
                grads = torch.autograd.grad(out[0, i, o], list(params.values()), retain_graph=True)
                for c in range(comps.C):
                    d = sum((g[i] * comps.weight(name)[i, c]).sum() for g, name in zip(grads, params, strict=True))
                    attr[b, i, c] += d.detach() ** 2
        for name, p in originals.items():
            _set(target, name, p)
    return attr


def _set(target: Target, name: str, value: torch.Tensor) -> None:
    if isinstance(target, TMS):
        if name == "linear1":
            target.__dict__["W"] = value
            target._parameters.pop("W", None)
        else:
            raise NotImplementedError(name)
    elif isinstance(target, ResidMLP):
        kind, idx = name.rsplit("_", 1)
        plist = target.mlp_in if kind == "mlp_in" else target.mlp_out
        plist._parameters[idx] = value  # type: ignore[assignment]


def make(target: Target, C: int = 3) -> Components:
    torch.manual_seed(1)
    comps = Components(target.param_shapes(), n_instances=target.n_instances, C=C, m=2, init_scale=3.0)
    return comps


@pytest.mark.parametrize("family", ["tms", "resid2"])
def test_gradient_attribution_matches_brute_force(family: str) -> None:
    torch.manual_seed(0)
    if family == "tms":
        target: Target = TMS(5, 2, n_instances=2)
    else:
        target = ResidMLP(6, 8, 4, n_layers=2, embed_seed=0)
    for p in target.parameters():
        p.requires_grad_(False)
    comps = make(target)
    x = torch.rand(4, target.n_instances, target.n_inputs)
    expected = brute_force(target, comps, x)
    torch.testing.assert_close(attributions("gradient", target, comps, x).detach(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast_attributions("gradient", target, comps, x), expected, rtol=1e-4, atol=1e-6)


def test_ablation_and_activation_attributions_on_a_hand_made_case() -> None:
    # one instance, identity-like TMS without bias: components split W by feature
    target = TMS(2, 2)
    target.W.data[0] = torch.eye(2)
    for p in target.parameters():
        p.requires_grad_(False)
    comps = Components(target.param_shapes(), n_instances=1, C=2, m=1)
    comps.A["linear1"].data[0, :, :, 0] = torch.eye(2)  # A_c = e_c
    comps.B["linear1"].data[0, :, 0, :] = torch.eye(2)  # B_c = e_c^T -> P_c = e_c e_c^T
    x = torch.tensor([[[2.0, 0.0]]])
    # activation: linear1 acts of c=0: x @ P_0 = (2, 0) -> 4; linear2 acts of c=0 on h=(2,0): 4. c=1: 0
    assert attributions("activation", target, comps, x).tolist() == [[[8.0, 0.0]]]
    # ablation: removing c=0 zeroes the output (2, 0) -> mean_o (2^2 + 0) / 2 = 2; c=1 changes nothing
    assert attributions("ablation", target, comps, x).tolist() == [[[2.0, 0.0]]]
