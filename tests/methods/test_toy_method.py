"""A decomposition method defined here, in the test, runs through the loop, the run folder,
evaluation, rerender, an inline sweep and the report with no edit anywhere else: one class per seam
type (config, decomposition, method) and one registry call (`register`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from torch import Tensor, nn

from apd.analysis import analyze, load_trial, write_report
from apd.analysis.trial import rerender
from apd.cli import main
from apd.config import MethodConfig, NonNegativeFloat, PositiveInt, load_config
from apd.methods import Decomposition, Method, StepOutput, register, unregister
from apd.methods.base import Masks
from apd.run import run_decomposition
from apd.targets.base import Layer, LayerFn, Target


class DirectConfig(MethodConfig):
    """Full-rank components and an L1 penalty: a deliberately naive method."""

    method: Literal["direct"] = "direct"
    C: PositiveInt
    l1_coeff: NonNegativeFloat = 1e-3


class DirectComponents(Decomposition):
    """`P (I, C, d_in, d_out)` per decomposed parameter; one group over every layer."""

    def __init__(self, target: Target, C: int, generator: torch.Generator) -> None:
        super().__init__()
        self.n_instances, self.params = target.n_instances, tuple(target.weights())
        self.layers = {layer.name: layer for layer in target.layers}
        self.groups, self.group_sizes = {"all": tuple(self.layers)}, {"all": C}
        shapes = target.param_shapes()
        self.P = nn.ParameterDict(
            {p: nn.Parameter(0.1 * torch.randn(target.n_instances, C, *shapes[p], generator=generator)) for p in shapes}
        )

    def component_weights(self, param: str) -> Tensor:
        return self.P[param]

    def layer_fns(self, layers: tuple[Layer, ...], mask: Masks | None = None) -> dict[str, LayerFn]:
        m = mask["all"] if isinstance(mask, Mapping) else mask

        def make(layer: Layer) -> LayerFn:
            def fn(x: Tensor) -> Tensor:
                w = self.P[layer.param].transpose(-1, -2) if layer.transposed else self.P[layer.param]
                per_c = torch.einsum("b i d, i c d e -> b i c e", x, w)
                return (per_c if m is None else per_c * m.unsqueeze(-1)).sum(2)

            return fn

        return {layer.name: make(layer) for layer in layers}


class Direct(Method):
    name = "direct"
    config_type = DirectConfig
    loss_keys = ("total_loss", "faithfulness_loss", "l1_loss")

    def init(self, cfg: Any, target: Target, generator: torch.Generator) -> Decomposition:
        return DirectComponents(target, cfg.C, generator)

    def loss(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor, generator: torch.Generator) -> StepOutput:
        faith = sum((w - comps.total_weight(p)).pow(2).mean(dim=(-2, -1)) for p, w in target.weights().items())
        l1 = sum(comps.component_weights(p).abs().mean(dim=(1, 2, 3)) for p in target.weights())
        terms = {"faithfulness_loss": faith, "l1_loss": l1}
        return StepOutput(terms, (faith + cfg.l1_coeff * l1).mean())  # type: ignore[arg-type]

    @torch.no_grad()
    def importances(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor) -> dict[str, Tensor]:
        """Each component's share of the first layer's output, squared."""
        first = target.layers[0]
        w = comps.component_weights(first.param)
        return {"all": torch.einsum("b i d, i c d e -> b i c e", x, w).pow(2).sum(-1)}


@pytest.fixture
def direct() -> Iterator[str]:
    register("direct", Direct)
    yield "direct"
    unregister("direct")


CONFIG: dict[str, Any] = {
    "method": "direct",
    "target": {"name": "tms-5-2"},
    "C": 5,
    "lr": 0.01,
    "steps": 30,
    "batch_size": 32,
    "log_every": 10,
    "eval": {"figures": True},
}


def test_a_method_defined_in_a_test_runs_end_to_end(direct: str, tmp_path: Path) -> None:
    exp = tmp_path / "direct.yaml"
    exp.write_text(yaml.safe_dump(CONFIG))
    cfg = load_config(exp, {"l1_coeff": 0.01})
    assert isinstance(cfg, DirectConfig) and cfg.l1_coeff == 0.01
    run = run_decomposition(cfg, tmp_path / "run", progress=False)
    m = run.metrics
    # the method's own loss keys, the family's metrics and the verdict, all in metrics.json
    assert run.status == "finished" and m["l1_loss"] > 0 and m["faithfulness_loss"] is not None
    assert "topk_recon_loss" not in m and {"mmcs", "recovered", "check_mmcs_per_instance"} <= set(m)
    art = load_trial(tmp_path / "run")
    assert art.config is not None and art.config["method"] == "direct" and art.figures
    assert rerender(art, tmp_path / "again")  # the stored components load through the method
    # a bad key of the method's config is one line naming it
    assert main(["decompose", str(exp), "--set", "l1_coef=1", "--out", str(tmp_path / "bad")]) == 2
    # an inline sweep over the method's own setting, then the report
    sweep = {
        "experiment": str(exp),
        "parameters": {"l1_coeff": {"type": "grid", "values": [0.0, 0.01]}},
        "seeds": [0],
        "search": {"algorithm": "grid"},
        "objective": {"metric": "l1_loss", "mode": "min"},
        "pruning": {"algorithm": "asha", "metric": "faithfulness_loss", "grace_steps": 10},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 0
    a = analyze([out])
    assert set(a.trials["method"]) == {"direct"} and len(a.trials) == 2
    assert {"faithfulness_loss", "l1_loss"} <= set(a.history.columns)  # type: ignore[union-attr]
    assert "with DIRECT" in write_report(a, tmp_path / "report").read_text()
