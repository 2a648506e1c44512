"""Hand-built targets and decompositions whose ground-truth metrics are known exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from apd.config import DecomposeConfig
from apd.data import sample_sparse_features
from apd.methods.apd.components import Components
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

NORMS = (1.0, 0.9, 1.1, 0.8, 1.2)


def pentagon_tms(n_instances: int = 1, n_hidden_layers: int = 0) -> TMS:
    """TMS 5-2 whose feature j points at angle 2 pi j / 5 with length NORMS[j].

    b_final = -0.5 silences interference: the largest off-target dot product is
    1.2 * 1.1 * cos 72deg = 0.41 < 0.5, while every feature's own 0.8^2 = 0.64 > 0.5.
    """
    tms = TMS(5, 2, n_instances, n_hidden_layers=n_hidden_layers)
    angles = torch.arange(5) * 2 * math.pi / 5
    W = torch.stack([torch.cos(angles), torch.sin(angles)], -1) * torch.tensor(NORMS)[:, None]
    with torch.no_grad():
        tms.W.copy_(W.expand(n_instances, 5, 2))
        tms.b_final.fill_(-0.5)
    return tms


Rows = list[list[int] | list[tuple[int, float]] | list[int | tuple[int, float]]]


def tms_components(tms: TMS, groups: Rows, C: int | None = None, scale: float = 1.0) -> Components:
    """Component c holds rows `groups[c]` of W (rank len(groups[c])); the other components are 0.

    An entry `(j, s)` puts `s` times row j there (a split feature: `[(0, 0.5)]` in two components).
    Hidden layers (identity) are split into rank-1 pieces e_k e_k^T, piece k in component k.
    """
    comps = Components(tms.param_shapes(), n_instances=tms.n_instances, C=C or max(5, len(groups)), m=3)
    W = tms.W.detach()
    with torch.no_grad():
        for p in [*comps.A.values(), *comps.B.values()]:
            p.zero_()
        for c, feats in enumerate(groups):
            for r, entry in enumerate(feats):
                j, share = entry if isinstance(entry, tuple) else (entry, 1.0)
                comps.A["linear1"][:, c, j, r] = 1.0
                comps.B["linear1"][:, c, r, :] = scale * share * W[:, j, :]
        for name in comps.A:
            if name.startswith("hidden_"):
                for k in range(tms.n_hidden):
                    comps.A[name][:, k, k, 0] = 1.0
                    comps.B[name][:, k, 0, k] = 1.0
    return comps


def tiny_resid_mlp() -> ResidMLP:
    """6 features, d_embed 16, d_mlp 6: neuron n reads and writes feature n only.

    W_E rows are orthonormal, W_in = W_E^T, W_out = 0.8 W_E, so y = x + 0.8 ReLU(x) exactly:
    the target misses the labels x + ReLU(x) by 0.2 ReLU(x) (a nonzero target-vs-label MSE).
    """
    model = ResidMLP(6, 16, 6, n_layers=1, n_instances=1, embed_seed=0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    w_e = q[:6]  # (6, 16), orthonormal rows
    with torch.no_grad():
        model.W_E.copy_(w_e[None])
        model.mlp_in[0].copy_(w_e.T[None])
        model.mlp_out[0].copy_(0.8 * w_e[None])
    return model


def resid_components(model: ResidMLP, groups: list[list[int]], C: int = 7) -> Components:
    """Component c holds the neurons `groups[c]` (their W_in columns and W_out rows), m = 2."""
    comps = Components(model.param_shapes(), n_instances=1, C=C, m=2)
    w_e = model.W_E.detach()[0]
    with torch.no_grad():
        for p in [*comps.A.values(), *comps.B.values()]:
            p.zero_()
        for c, neurons in enumerate(groups):
            for r, n in enumerate(neurons):
                comps.A["mlp_in_0"][0, c, :, r] = w_e[n]
                comps.B["mlp_in_0"][0, c, r, n] = 1.0
                comps.A["mlp_out_0"][0, c, n, r] = 1.0
                comps.B["mlp_out_0"][0, c, r, :] = 0.8 * w_e[n]
    return comps


def make_cfg(C: int, **eval_overrides: object) -> DecomposeConfig:
    return DecomposeConfig.from_dict(
        {
            "target": {"name": "handbuilt"},
            "C": C,
            "topk": 1.0,
            "topk_recon_coeff": 1.0,
            "lr": 1e-3,
            "steps": 1,
            "batch_size": 64,
            "implementation": "naive",
            "eval": {"scrub_batches": 4, **eval_overrides},
        }
    )


def resid_sampler(seed: int = 0) -> Callable[[int], torch.Tensor]:
    """Training-like data for the tiny model: p = 0.2, values U[-1, 1] (~39 % single-active)."""
    gen = torch.Generator().manual_seed(seed)

    def sample(batch: int) -> torch.Tensor:
        return sample_sparse_features(batch, 1, 6, feature_probability=0.2, value_range=(-1.0, 1.0), generator=gen)

    return sample


@pytest.fixture
def tms_builders() -> tuple[Callable[..., TMS], Callable[..., Components]]:
    return pentagon_tms, tms_components


@pytest.fixture
def resid_builders() -> tuple[Callable[[], ResidMLP], Callable[..., Components]]:
    return tiny_resid_mlp, resid_components


@pytest.fixture
def cfg_factory() -> Callable[..., DecomposeConfig]:
    return make_cfg


@pytest.fixture
def sampler_factory() -> Callable[..., Callable[[int], torch.Tensor]]:
    return resid_sampler
