"""Registered targets: one line per target (method notes section 2 for every number).

Recipes: TMS as the reference `train_tms.py` (AdamW wd 0.01, lr 5e-3 with linear decay to 0; the
paper's constant LR is `lr_schedule="constant"`). The `-id` variants (a frozen identity hidden
layer) exist only in the SPD paper, so they use its retrained-target recipe: 10k steps, constant
5e-3, batch 1024 (5-2) / 8192 (40-10), with the instance counts of the plain variants (instances
train independently). Residual MLPs use the published 1-layer recipe for every depth (the 2- and
3-layer recipes are unpublished): AdamW wd 0.01, lr 3e-3 quarter-cosine, batch 2048, 10k steps.
"""

from __future__ import annotations

from apd.errors import ConfigError
from apd.targets.specs import GatedSpec, ResidMLPSpec, TargetSpec, TMSSpec, TrainRecipe

_RESID = TrainRecipe(steps=10_000, batch_size=2048, lr=3e-3, lr_schedule="cosine")

TARGETS: dict[str, TargetSpec] = {
    "tms-5-2": TMSSpec(
        description="TMS 5 features -> 2 hidden, 12 instances",
        n_features=5, n_hidden=2, n_instances=12,
        train=TrainRecipe(steps=5000, batch_size=1024, lr=5e-3, lr_schedule="linear"),
    ),
    "tms-40-10": TMSSpec(
        description="TMS 40 features -> 10 hidden, 3 instances",
        n_features=40, n_hidden=10, n_instances=3,
        train=TrainRecipe(steps=2000, batch_size=2048, lr=5e-3, lr_schedule="linear"),
    ),
    "tms-5-2-id": TMSSpec(
        description="TMS 5-2 with a frozen identity hidden layer (SPD paper), 12 instances",
        n_features=5, n_hidden=2, n_instances=12, n_hidden_layers=1,
        train=TrainRecipe(steps=10_000, batch_size=1024, lr=5e-3, lr_schedule="constant"),
    ),
    "tms-40-10-id": TMSSpec(
        description="TMS 40-10 with a frozen identity hidden layer (SPD paper), 3 instances",
        n_features=40, n_hidden=10, n_instances=3, n_hidden_layers=1,
        train=TrainRecipe(steps=10_000, batch_size=8192, lr=5e-3, lr_schedule="constant"),
    ),
    "resid-mlp-1": ResidMLPSpec(
        description="residual MLP, 100 features, d_embed 1000, 1 layer x 50 neurons",
        n_features=100, d_embed=1000, d_mlp=50, n_layers=1, train=_RESID,
    ),
    "resid-mlp-2": ResidMLPSpec(
        description="residual MLP, 100 features, d_embed 1000, 2 layers x 25 neurons",
        n_features=100, d_embed=1000, d_mlp=25, n_layers=2, train=_RESID,
    ),
    "resid-mlp-3": ResidMLPSpec(
        description="residual MLP, 102 features, d_embed 1000, 3 layers x 17 neurons (SPD paper)",
        n_features=102, d_embed=1000, d_mlp=17, n_layers=3, train=_RESID,
    ),
    "gated-4": GatedSpec(
        description="hand-coded gated functions: 4 functions x 10 ReLUs over 2 residual layers",
    ),
}  # fmt: skip


def target_names() -> list[str]:
    """Registered target names, in registry order."""
    return list(TARGETS)


def get_spec(name: str) -> TargetSpec:
    """The registered spec; ConfigError listing the known names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None
