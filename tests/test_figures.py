"""Every figure type is written as a PNG for TMS (2-D and projected hidden) and residual MLPs."""

from __future__ import annotations

from pathlib import Path

import torch

from apd.config import DecomposeConfig
from apd.data import sample_sparse_features
from apd.figures import make_figures
from apd.methods.apd.components import Components
from apd.metrics import evaluate
from apd.targets.base import Target
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(target: Target, C: int, tmp_path: Path) -> list[Path]:
    torch.manual_seed(0)
    cfg = DecomposeConfig.from_dict(
        {
            "target": {"name": "random"},
            "C": C,
            "topk": 1.0,
            "topk_recon_coeff": 1.0,
            "lr": 1e-3,
            "steps": 1,
            "batch_size": 32,
            "implementation": "naive",
            "eval": {"scrub_batches": 2},
        }
    )
    comps = Components(
        target.param_shapes(),
        n_instances=target.n_instances,
        C=C,
        m=target.default_m(),
        generator=torch.Generator().manual_seed(0),
    )
    gen = torch.Generator().manual_seed(1)

    def sample(batch: int) -> torch.Tensor:
        return sample_sparse_features(
            batch, target.n_instances, target.n_inputs, feature_probability=0.2, value_range=(-1.0, 1.0), generator=gen
        )

    metrics, artifacts = evaluate(cfg, target, comps, sample=sample)
    return make_figures(target, comps, metrics, artifacts, tmp_path / "figures")


def test_tms_figures(tmp_path):
    paths = _run(TMS(5, 2, n_instances=2), 5, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "identity_pattern_inst0.png",
        "identity_pattern_inst1.png",
        "tms_weights_inst0.png",
        "tms_weights_inst1.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000


def test_tms_figures_projected_hidden_and_many_components(tmp_path):
    # 4-D hidden space is drawn in the target's top-2 singular plane; 10 of 14 components shown
    paths = _run(TMS(8, 4), 14, tmp_path)
    assert sorted(p.name for p in paths) == ["identity_pattern_inst0.png", "tms_weights_inst0.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000


def test_resid_mlp_figures(tmp_path):
    paths = _run(ResidMLP(12, 32, 4, n_layers=2, embed_seed=0), 14, tmp_path)
    assert sorted(p.name for p in paths) == [
        "component_categories_inst0.png",
        "identity_pattern_inst0.png",
        "per_feature_losses_inst0.png",
        "resid_contributions_inst0.png",
        "scrub_losses_inst0.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
