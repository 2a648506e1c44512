"""The TMS family: Toy Model of Superposition `x_hat = ReLU(W^T [H] W x + b)` with tied W (Elhage et al. 2022).

Network, spec, training recipe and the ground truth (docs/method.md): feature j's true
mechanism is row j of `linear1` (the tied `linear2` is its transpose), so a TMS instance is
recovered when MMCS and ML2R pass as in the papers, the argmax matching is one-to-one, no feature
is split over components, every true mechanism has a matched component of cosine >= 0.99 and
a norm ratio in range, and (with hidden layers) the components sum to each hidden matrix.

User-file format (`kind: "tms"` in a `.pt`/`.npz` file, see `apd.targets.file` for the rest):
`W` `(n_features, n_hidden)` or `(instances, n_features, n_hidden)` (linear1 in the `x @ W`
convention; linear2 is its transpose), `b_final` `(n_features,)` or `(instances, n_features)`
(default 0), optional frozen hidden matrices `hidden0, hidden1, ...` `(n_hidden, n_hidden)` (or with
instances), `feature_probability` and `value_range` as for any file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from apd.config import PositiveFloat, PositiveInt, Probability
from apd.errors import ConfigError
from apd.metrics.tms import relative_frobenius_error, tms_scores
from apd.targets.base import Layer, LayerFn, Target
from apd.targets.family import (
    MECHANISM_CHECKS,
    MECHANISM_COLUMNS,
    MECHANISM_KEYS,
    Check,
    Column,
    EvalContext,
    Family,
    TargetSpec,
    TrainRecipe,
    ValueRange,
    at_least,
    finite_number,
    mechanism_metrics,
)
from apd.targets.file import DATA_ENTRIES, check_instances, file_tensor, with_instances

if TYPE_CHECKING:
    from apd.methods.base import Decomposition


class TMS(Target):
    """TMS with `n_instances` independent models; optional frozen hidden layers (identity or random)."""

    kind = "tms"

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        n_instances: int = 1,
        n_hidden_layers: int = 0,
        hidden_init: str = "identity",
    ) -> None:
        super().__init__()
        self.n_features, self.n_hidden = n_features, n_hidden
        self.n_instances, self.n_inputs, self.n_outputs = n_instances, n_features, n_features
        self.W = nn.Parameter(torch.empty(n_instances, n_features, n_hidden))
        nn.init.xavier_normal_(self.W)
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))
        hidden = []
        for _ in range(n_hidden_layers):
            if hidden_init == "identity":
                h = torch.eye(n_hidden).expand(n_instances, n_hidden, n_hidden).clone()
            elif hidden_init == "random":
                h = torch.randn(n_instances, n_hidden, n_hidden)
            else:
                raise ValueError(f"hidden_init must be identity or random (got {hidden_init!r})")
            hidden.append(nn.Parameter(h, requires_grad=False))
        self.hidden = nn.ParameterList(hidden)
        self.layers = (
            Layer("linear1", "linear1"),
            *(Layer(f"hidden_{i}", f"hidden_{i}") for i in range(n_hidden_layers)),
            Layer("linear2", "linear1", transposed=True),
        )
        self.act_recon_layers = tuple(layer.name for layer in self.layers)

    def weights(self) -> dict[str, Tensor]:
        return {"linear1": self.W, **{f"hidden_{i}": h for i, h in enumerate(self.hidden)}}

    def default_m(self) -> int:
        return min(self.n_features, self.n_hidden) + 1

    def labels(self, x: Tensor) -> Tensor:
        """`|x|`, as the reference code trains it."""
        return x.abs()

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        h = self.apply_layer("linear1", x, layer_fns)
        for i in range(len(self.hidden)):
            h = self.apply_layer(f"hidden_{i}", h, layer_fns)
        return F.relu(self.apply_layer("linear2", h, layer_fns) + self.b_final)


class TMSSpec(TargetSpec):
    """Toy model of superposition `ReLU(W^T [I] W x + b)`; loss sum_instances mean imp (x - x_hat)^2."""

    kind: Literal["tms"] = "tms"
    n_features: PositiveInt
    n_hidden: PositiveInt
    n_instances: PositiveInt = 1
    n_hidden_layers: Annotated[int, Field(ge=0)] = 0
    hidden_init: Literal["identity", "random"] = "identity"
    """Frozen hidden matrices: identity (`fixed_identity_hidden_layers`) or randn."""
    feature_probability: Probability = 0.05
    value_range: ValueRange = (0.0, 1.0)
    importance: PositiveFloat = 1.0
    train: TrainRecipe


def tms_loss(out: Tensor, labels: Tensor, importance: float = 1.0) -> Tensor:
    """Sum over instances of the mean over batch and features of `imp (labels - out)^2`."""
    return (importance * (labels - out) ** 2).mean(dim=(0, 2)).sum()


@dataclass
class TMSFigureData:
    """Host arrays for the weight figure: target rows `W (I, f, h)`, components `P (I, C, f, h)`, argmax match."""

    W: np.ndarray
    P: np.ndarray
    match: np.ndarray


def _has_hidden(metrics: Mapping[str, Any], ev: Any) -> bool:
    n = finite_number(metrics.get("n_hidden_layers"))
    return (n or 0) > 0 or "hidden_identity_rel_error_per_instance" in metrics


HIDDEN_KEYS = ("hidden_identity_rel_error", "hidden_identity_rel_error_per_instance")
"""Only for TMS targets with hidden layers."""


class TMSFamily(Family):
    kind = "tms"
    label = "TMS"
    spec_type = TMSSpec
    metric_keys = (
        "mmcs",
        "ml2r",
        "n_distinct",
        "mmcs_per_instance",
        "ml2r_per_instance",
        "n_distinct_per_instance",
        "n_hidden_layers",
        *MECHANISM_KEYS,
        *HIDDEN_KEYS,
    )
    checks = (
        at_least("mmcs", "low MMCS", "mmcs_per_instance", "mmcs_min", "MMCS"),
        at_least("ml2r", "low ML2R", "ml2r_per_instance", "ml2r_min", "ML2R"),
        Check(
            "ml2r_max",
            "high ML2R",
            ("ml2r_per_instance",),
            lambda v, ev: v[0] <= ev.ml2r_max,
            lambda ev: f"ML2R <= {ev.ml2r_max:g}",
            lambda m, ev: ev.ml2r_max is not None,
        ),
        Check(
            "one_to_one",
            "non-distinct matching",
            ("n_distinct_per_instance", "n_features"),
            lambda v, ev: v[0] == v[1],
            lambda ev: "one-to-one argmax matching (as many distinct components as features)",
            lambda m, ev: ev.require_one_to_one,
        ),
        *MECHANISM_CHECKS,
        Check(
            "hidden_identity",
            "hidden identity not covered",
            ("hidden_identity_rel_error_per_instance",),
            lambda v, ev: v[0] <= ev.identity_hidden_rel_tol,
            lambda ev: f"hidden layers: components sum within {ev.identity_hidden_rel_tol:g} (relative Frobenius)",
            _has_hidden,
        ),
    )
    columns = (
        Column("mmcs", "MMCS (cosine, 1 = aligned)", lambda ev: ev.mmcs_min, "high", median=True),
        Column("ml2r", "ML2R (norm ratio, 1 = no shrinkage)", lambda ev: ev.ml2r_min, "high", median=True),
        Column("n_distinct", "distinct matches (count)"),
        *MECHANISM_COLUMNS,
    )
    marker_keys = ("mmcs_per_instance",)
    summary_keys = ("mmcs", "ml2r", "n_distinct", "mechanism_cos", "split_share")

    def build(self, spec: Any, seed: int = 0) -> Target:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            return TMS(spec.n_features, spec.n_hidden, spec.n_instances, spec.n_hidden_layers, spec.hidden_init)

    def recipe(self, spec: Any) -> TrainRecipe | None:
        return spec.train

    def train_loss(self, spec: Any, model: Target, x: Tensor) -> Tensor:
        return tms_loss(model(x), model.labels(x), spec.importance)

    def from_arrays(self, data: Mapping[str, Any], path: Path) -> Target:
        hidden_keys = sorted((k for k in data if k.startswith("hidden") and k[6:].isdigit()), key=lambda k: int(k[6:]))
        unknown = [k for k in data if k not in (*DATA_ENTRIES, "W", "b_final", *hidden_keys)]
        if unknown:
            raise ConfigError(
                f"{path}: unknown entry {unknown[0]!r} for kind tms (expected W, b_final, hidden0.., "
                "feature_probability, value_range)"
            )
        if "W" not in data:
            raise ConfigError(f"{path}: W: required for kind tms ((n_features, n_hidden) linear1 weights)")
        expected = [f"hidden{i}" for i in range(len(hidden_keys))]
        if hidden_keys != expected:
            raise ConfigError(
                f"{path}: hidden layers must be hidden0..hidden{len(hidden_keys) - 1} (got {hidden_keys})"
            )
        W = with_instances(file_tensor(data["W"], "W", path, (2, 3)), 3)
        n_f, n_h = W.shape[1:]
        entries = {"W": W}
        if "b_final" in data:
            b = with_instances(file_tensor(data["b_final"], "b_final", path, (1, 2)), 2)
            if b.shape[-1] != n_f:
                raise ConfigError(f"{path}: b_final: expected ({n_f},) for W's {n_f} features (got {tuple(b.shape)})")
            entries["b_final"] = b
        for key in hidden_keys:
            h = with_instances(file_tensor(data[key], key, path, (2, 3)), 3)
            if h.shape[1:] != (n_h, n_h):
                raise ConfigError(f"{path}: {key}: expected ({n_h}, {n_h}) for W's {n_h} hidden (got {tuple(h.shape)})")
            entries[key] = h
        n_inst = check_instances(entries, path)
        model = TMS(n_f, n_h, n_inst, n_hidden_layers=len(hidden_keys))
        with torch.no_grad():
            model.W.copy_(W.expand(n_inst, -1, -1))
            model.b_final.copy_(entries.get("b_final", torch.zeros(1, n_f)).expand(n_inst, -1))
            for i, key in enumerate(hidden_keys):
                model.hidden[i].copy_(entries[key].expand(n_inst, -1, -1))
        return model

    def describe(self, spec: Mapping[str, Any]) -> str:
        if "n_features" not in spec or "n_hidden" not in spec:
            return self.label
        text = f"TMS {spec['n_features']}-{spec['n_hidden']}"
        if spec.get("n_hidden_layers"):
            text += ", hidden identity" if spec.get("hidden_init", "identity") == "identity" else ", random hidden"
        return text

    def identity_layers(self, model: Target) -> tuple[str, ...]:
        """The hidden matrices are one shared mechanism (every piece always active), not per feature."""
        return ("linear1", "linear2")

    def mechanisms(self, model: Target) -> dict[str, Tensor] | None:
        """Feature j: row j of linear1 and nothing else, `(I, f, f, h)`."""
        W = model.weights()["linear1"].detach()
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        return {"linear1": torch.einsum("j k, i k h -> i j k h", eye, W)}

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        """MMCS, ML2R and distinct matches over linear1; weights vs mechanisms; hidden layers vs the target's."""
        target, comps = ctx.target, ctx.components
        W = target.weights()["linear1"].detach()
        P = comps.component_weights("linear1").detach()
        s = tms_scores(W, P)
        hidden = [p for p in target.weights() if p.startswith("hidden_")]
        metrics: dict[str, Any] = {
            "mmcs": s.mmcs.mean(),
            "ml2r": s.ml2r.mean(),
            "n_distinct": s.n_distinct.float().mean(),
            "mmcs_per_instance": s.mmcs,
            "ml2r_per_instance": s.ml2r,
            "n_distinct_per_instance": s.n_distinct,
            "n_hidden_layers": len(hidden),
        }
        if hidden:
            errs = torch.stack(
                [relative_frobenius_error(comps.total_weight(p).detach(), target.weights()[p].detach()) for p in hidden]
            ).amax(dim=0)  # worst hidden layer per instance
            metrics["hidden_identity_rel_error"] = errs.mean()
            metrics["hidden_identity_rel_error_per_instance"] = errs
        truth = self.mechanisms(target)
        assert truth is not None
        mech, _ = mechanism_metrics(target, comps, truth)
        metrics |= mech
        host = TMSFigureData(_host(W), _host(P), s.match.cpu().numpy().astype(np.int64))
        return metrics, host

    def figures(
        self, model: Target, components: Decomposition, metrics: Mapping[str, Any], data: Any, out_dir: Path, n: int
    ) -> list[Path]:
        from apd.figures import fmt_metric, tms_weight_figure

        paths = []
        for i in range(n):
            tag = f"instance {i}" if model.n_instances > 1 else "run"
            mmcs = fmt_metric(metrics, "mmcs_per_instance", i)
            ml2r = fmt_metric(metrics, "ml2r_per_instance", i)
            title = f"TMS {tag}: feature weight vectors (linear1 rows); MMCS {mmcs}, ML2R {ml2r}"
            paths.append(
                tms_weight_figure(data.W[i], data.P[i], data.match[i], title, out_dir / f"tms_weights_inst{i}.png")
            )
        return paths


def _host(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


__all__ = ["TMS", "TMSFamily", "TMSSpec", "tms_loss"]
