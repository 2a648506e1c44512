"""A target family defined here, in the test, passes through decompose, an inline sweep and the report
with no edit anywhere else: one module (this one) and one registry line (`register_family`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from torch import Tensor, nn

from apd.analysis import analyze, write_report
from apd.cli import main
from apd.config import load_config
from apd.run import run_decomposition
from apd.targets import FAMILIES, TARGETS, Column, EvalContext, Family, Target, TargetSpec, register_family
from apd.targets.base import Layer, LayerFn
from apd.targets.family import MECHANISM_CHECKS, MECHANISM_KEYS, at_least, mechanism_metrics
from apd.targets.registry import _adapter


class Diagonal(Target):
    """`y = x @ diag(s)`: feature j's mechanism is the single weight s_j at (j, j)."""

    kind = "toy"

    def __init__(self, scales: Tensor) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.diag(scales)[None])
        self.n_instances, self.n_inputs, self.n_outputs = 1, len(scales), len(scales)
        self.layers = (Layer("lin", "lin"),)
        self.act_recon_layers = ("lin",)

    def weights(self) -> dict[str, Tensor]:
        return {"lin": self.W}

    def default_m(self) -> int:
        return 1

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        return self.apply_layer("lin", x, layer_fns)


class DiagonalSpec(TargetSpec):
    kind: Literal["toy"] = "toy"
    n: int = 3
    feature_probability: float = 0.3
    value_range: tuple[float, float] = (0.0, 1.0)


class DiagonalFamily(Family):
    kind = "toy"
    label = "diagonal toy"
    spec_type = DiagonalSpec
    metric_keys = ("diag_share", "diag_share_per_instance", *MECHANISM_KEYS)
    checks = (
        at_least("diag", "weight off the diagonal", "diag_share_per_instance", "mechanism_cos_min", "diagonal share"),
        *MECHANISM_CHECKS,
    )
    columns = (
        Column("diag_share", "diagonal share of the weights (1 = all)", lambda ev: ev.mechanism_cos_min, "high"),
    )
    summary_keys = ("diag_share",)

    def build(self, spec: Any, seed: int = 0) -> Target:
        return Diagonal(torch.arange(1, spec.n + 1, dtype=torch.float32))

    def describe(self, spec: Mapping[str, Any]) -> str:
        return f"diagonal toy of {spec.get('n', '?')}"

    def mechanisms(self, model: Target) -> dict[str, Tensor] | None:
        d = model.weights()["lin"].detach().diagonal(dim1=-2, dim2=-1)  # (I, n)
        return {"lin": torch.diag_embed(torch.eye(d.shape[-1]) * d[:, None, :])}  # mechanism j: d_j at (j, j)

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        P = ctx.components.total_weight("lin").detach()
        share = P.diagonal(dim1=-2, dim2=-1).norm(dim=-1) / P.flatten(1).norm(dim=-1).clamp_min(1e-12)
        truth = self.mechanisms(ctx.target)
        assert truth is not None
        mech, _ = mechanism_metrics(ctx.target, ctx.components, truth)
        return {"diag_share": share.mean(), "diag_share_per_instance": share, **mech}, None


@pytest.fixture
def toy() -> Iterator[str]:
    register_family(DiagonalFamily())
    TARGETS["toy-3"] = DiagonalSpec()
    yield "toy-3"
    del TARGETS["toy-3"], FAMILIES["toy"]
    _adapter.cache_clear()


CONFIG = {
    "target": {"name": "toy-3"},
    "C": 3,
    "topk": 0.5,
    "topk_recon_coeff": 1.0,
    "lr": 0.01,
    "steps": 40,
    "batch_size": 32,
    "log_every": 20,
    "eval": {"figures": False},
}


def test_a_family_defined_in_a_test_runs_end_to_end(
    toy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "toy.yaml"
    exp.write_text(yaml.safe_dump(CONFIG))
    result = run_decomposition(load_config(exp), tmp_path / "run", progress=False)
    m = result.metrics
    assert result.status == "finished" and m["family"] == "toy" and 0.0 <= m["diag_share"] <= 1.0 + 1e-6
    assert {"check_diag_per_instance", "check_split_per_instance", "check_mechanism_cos_per_instance"} <= set(m)
    # the CLI summary prints the family's own keys
    assert main(["decompose", str(exp), "--out", str(tmp_path / "cli"), "--quiet"]) in (0, 1)
    assert "diag_share=" in capsys.readouterr().out
    # an inline sweep over topk, then the report: family label, rule line, metric column
    sweep = {
        "experiment": str(exp),
        "parameters": {"topk": {"type": "grid", "values": [0.4, 0.8]}},
        "seeds": [0],
        "search": {"algorithm": "grid"},
        "objective": {"metric": "diag_share", "mode": "max"},
        "tracking": {"enabled": False},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 0
    a = analyze([out])
    assert [e.label for e in a.experiments] == ["diagonal toy of 3 (toy-3) with APD"]
    assert set(a.trials["family"]) == {"toy"} and set(a.trials["n_instances"]) == {1}
    text = write_report(a, tmp_path / "report").read_text()
    assert "- diagonal toy of 3 (toy-3) with APD: diagonal share >= 0.97; no split" in text
    assert "metrics.png" in text  # the family's column is plotted against topk
