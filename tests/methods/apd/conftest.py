"""Small trained targets shared by the core tests."""

import functools

import pytest
import torch

from apd.data import sample_sparse_features
from apd.targets.base import Target
from apd.targets.tms import TMS


@functools.cache
def trained_tms(n_features: int = 5, n_hidden: int = 2, n_instances: int = 2, steps: int = 800) -> TMS:
    """A TMS trained like the reference recipe (AdamW, lr 5e-3 linear decay), shortened."""
    torch.manual_seed(0)
    model = TMS(n_features, n_hidden, n_instances)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = sample_sparse_features(
            1024, n_instances, n_features, feature_probability=0.05, value_range=(0, 1), generator=gen
        )
        loss = (model(x) - x).pow(2).mean(dim=(0, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return frozen(model)


def frozen(model: Target) -> Target:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@pytest.fixture
def tms52() -> TMS:
    return trained_tms()
