"""Tiny targets of every family and configs shared by the SPD tests."""

from __future__ import annotations

import functools

import torch

from apd.data import Batches, sample_sparse_features
from apd.methods.spd import SPD, SPDComponents, SPDConfig
from apd.targets.base import Target
from apd.targets.file import LinearStack
from apd.targets.gated import GatedMLP
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS


class GenericResidMLP(ResidMLP):
    """Same model; a subclass takes the generic (unfolded) fast path."""


FAMILIES = ["tms", "tms-id", "resid1", "resid2", "resid-generic", "gated", "file"]


def make_target(family: str) -> Target:
    torch.manual_seed(0)
    if family == "tms":
        t: Target = TMS(5, 2, n_instances=2)
    elif family == "tms-id":
        t = TMS(5, 2, n_instances=2, n_hidden_layers=1)
    elif family == "resid1":
        t = ResidMLP(6, 32, 4, n_layers=1, n_instances=2, embed_seed=0)
    elif family == "resid2":
        t = ResidMLP(6, 32, 3, n_layers=2, n_instances=2, embed_seed=0)
    elif family == "resid-generic":
        t = GenericResidMLP(6, 32, 3, n_layers=2, n_instances=2, embed_seed=0)
    elif family == "gated":
        t = GatedMLP(n_functions=2, neurons_per_function=4, n_layers=2, seed=0)
    elif family == "file":
        ws = [torch.randn(2, 6, 5), torch.randn(2, 5, 4) / 2, torch.randn(2, 4, 3) / 2]
        t = LinearStack(ws, [torch.randn(2, 5) / 4, None, torch.randn(2, 3)])
    else:
        raise ValueError(family)
    return t.eval().requires_grad_(False)


def sample(target: Target, batch: int, seed: int = 1) -> torch.Tensor:
    """Sparse inputs (denser than the paper's, so small batches have active and all-zero samples)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, GatedMLP):
        return target.sample_inputs(batch, control_probability=0.3, generator=gen)
    value_range = (-1.0, 1.0) if isinstance(target, ResidMLP) else (0.0, 1.0)
    return sample_sparse_features(
        batch, target.n_instances, target.n_inputs, feature_probability=0.2, value_range=value_range, generator=gen
    )


def spd_cfg(**kw: object) -> SPDConfig:
    base = dict(target={"name": "tms-5-2"}, C=4, n_ci_mlp_neurons=3, importance_minimality_coeff=0.1, pnorm=1.0,
                lr=1e-2, steps=10, batch_size=64, log_every=5)  # fmt: skip
    return SPDConfig.model_validate(base | kw)


def components(cfg: SPDConfig, target: Target, seed: int = 0) -> SPDComponents:
    comps = SPD().init(cfg, target, torch.Generator().manual_seed(seed))
    assert isinstance(comps, SPDComponents)
    return comps


@functools.cache
def trained_tms(n_instances: int = 2, steps: int = 600) -> TMS:
    """A TMS 5-2 trained like the reference recipe (AdamW, lr 5e-3 linear decay), shortened."""
    torch.manual_seed(0)
    model = TMS(5, 2, n_instances)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = sample_sparse_features(1024, n_instances, 5, feature_probability=0.05, value_range=(0, 1), generator=gen)
        loss = (model(x) - x).pow(2).mean(dim=(0, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def tms_batches(n_instances: int = 2, batch_size: int = 256, seed: int = 0) -> Batches:
    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        return sample_sparse_features(n, n_instances, 5, feature_probability=0.05, value_range=(0, 1), generator=gen)

    return Batches(draw, batch_size, seed=seed, device="cpu")
