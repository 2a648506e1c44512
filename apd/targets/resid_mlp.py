"""The residual-MLP family: `r += ReLU(r W_in) W_out` per layer, `y = r W_E^T` (docs/method.md).

Network, spec, labels `y = x + ReLU(c x)` (or `|c x|`), training losses, and the ground truth
(docs/method.md): neuron contributions and mono/duo/poly/dead counts, the one-hot feature map and its
dedicated fraction, per-feature top-1 losses and scrubbing. The true mechanisms are not known
exactly (one component per feature, spread over many neurons), so the verdict is the paper's:
dedicated fraction, monosemantic dedicated components, top-1 MSE and scrub separation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from apd.config import PositiveFloat, PositiveInt, Probability
from apd.metrics.contributions import (
    best_component_per_feature,
    neuron_contributions,
    polysemanticity,
    represented_features,
)
from apd.metrics.feature_map import dedicated_features, dedicated_not_mono, feature_component_map
from apd.metrics.per_feature import normalized_mse, per_feature_sums, single_active_feature
from apd.metrics.scrub import forced_components, masked_output, monosemantic_baseline, per_sample_mse, scrub_masks
from apd.targets.base import Layer, LayerFn, Target
from apd.targets.family import (
    Check,
    Column,
    EvalContext,
    Family,
    TargetSpec,
    TrainRecipe,
    ValueRange,
    at_least,
    at_most,
    finite_number,
)

if TYPE_CHECKING:
    from apd.methods.base import Decomposition

LabelType = Literal["act_plus_resid", "abs"]
SCRUB_KEEP_PROB = 0.5


def resid_labels(x: Tensor, coeffs: Tensor, label_type: str) -> Tensor:
    """`x + ReLU(c x)` (act_plus_resid) or `|c x|` (abs), elementwise per feature."""
    cx = x * coeffs.to(x.device)
    return x + F.relu(cx) if label_type == "act_plus_resid" else cx.abs()


class ResidMLP(Target):
    """Residual MLP with a frozen random unit-norm embedding `W_E` and `W_U = W_E^T`; no biases."""

    kind = "resid_mlp"
    act_recon_relu = True
    label_coeffs: Tensor
    shared_tensors = ("label_coeffs",)

    def __init__(
        self,
        n_features: int,
        d_embed: int,
        d_mlp: int,
        n_layers: int = 1,
        n_instances: int = 1,
        embed_seed: int | None = None,
        *,
        label_coeffs: Tensor | None = None,
        label_type: LabelType = "act_plus_resid",
    ) -> None:
        super().__init__()
        self.n_features, self.d_embed, self.d_mlp, self.n_layers = n_features, d_embed, d_mlp, n_layers
        self.n_instances, self.n_inputs, self.n_outputs = n_instances, n_features, n_features
        gen = torch.Generator().manual_seed(embed_seed) if embed_seed is not None else None
        w_e = torch.randn(n_instances, n_features, d_embed, generator=gen)
        self.register_buffer("W_E", w_e / w_e.norm(dim=-1, keepdim=True))
        coeffs = torch.ones(n_features) if label_coeffs is None else label_coeffs.float()
        self.register_buffer("label_coeffs", coeffs, persistent=False)  # rebuilt from the spec
        self.label_type = label_type
        self.mlp_in = nn.ParameterList()
        self.mlp_out = nn.ParameterList()
        for _ in range(n_layers):
            w_in, w_out = torch.empty(n_instances, d_embed, d_mlp), torch.empty(n_instances, d_mlp, d_embed)
            for i in range(n_instances):  # nn.Linear's default (kaiming-uniform) per instance
                nn.init.kaiming_uniform_(w_in[i].T, a=5**0.5)
                nn.init.kaiming_uniform_(w_out[i].T, a=5**0.5)
            self.mlp_in.append(nn.Parameter(w_in))
            self.mlp_out.append(nn.Parameter(w_out))
        self.layers = tuple(
            layer
            for i in range(n_layers)
            for layer in (Layer(f"mlp_in_{i}", f"mlp_in_{i}"), Layer(f"mlp_out_{i}", f"mlp_out_{i}"))
        )
        self.act_recon_layers = tuple(f"mlp_in_{i}" for i in range(n_layers))

    def weights(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i in range(self.n_layers):
            out[f"mlp_in_{i}"], out[f"mlp_out_{i}"] = self.mlp_in[i], self.mlp_out[i]
        return out

    def default_m(self) -> int:
        return min(self.d_embed, self.d_mlp)

    def embed(self, x: Tensor) -> Tensor:
        return torch.einsum("b i f, i f d -> b i d", x, self.W_E)

    def unembed(self, r: Tensor) -> Tensor:
        return torch.einsum("b i d, i f d -> b i f", r, self.W_E)

    def labels(self, x: Tensor) -> Tensor:
        return resid_labels(x, self.label_coeffs, self.label_type)

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        r = self.embed(x)
        for i in range(self.n_layers):
            hidden = F.relu(self.apply_layer(f"mlp_in_{i}", r, layer_fns))
            r = r + self.apply_layer(f"mlp_out_{i}", hidden, layer_fns)
        return self.unembed(r)


class ResidMLPSpec(TargetSpec):
    """Residual MLP trained on labels `y = x + ReLU(c x)` (or `|c x|`)."""

    kind: Literal["resid_mlp"] = "resid_mlp"
    n_features: PositiveInt
    d_embed: PositiveInt
    d_mlp: PositiveInt
    """Neurons per layer."""
    n_layers: PositiveInt = 1
    n_instances: PositiveInt = 1
    label_type: LabelType = "act_plus_resid"
    use_trivial_label_coeffs: bool = True
    """c = 1 for every feature; otherwise c ~ U[1, 2] seeded by `label_fn_seed`."""
    label_fn_seed: int = 0
    loss_type: Literal["readoff", "resid"] = "readoff"
    """`readoff`: mean imp (y_hat - y)^2; `resid`: mean (r_final - y W_E)^2 on the residual stream."""
    importance_val: PositiveFloat = 1.0
    """Feature i has importance importance_val^i."""
    feature_probability: Probability = 0.01
    value_range: ValueRange = (-1.0, 1.0)
    train: TrainRecipe

    @model_validator(mode="after")
    def _resid_loss(self) -> Self:
        if self.loss_type == "resid" and self.importance_val != 1.0:
            raise ValueError("loss_type resid needs importance_val 1")
        return self


def resid_label_coeffs(spec: ResidMLPSpec) -> Tensor:
    """`c (n_features,)` on the CPU: ones, or U[1, 2] from `label_fn_seed`."""
    if spec.use_trivial_label_coeffs:
        return torch.ones(spec.n_features)
    return torch.rand(spec.n_features, generator=torch.Generator().manual_seed(spec.label_fn_seed)) + 1


def feature_importances(n_features: int, importance_val: float, device: torch.device | str) -> Tensor:
    """Feature i weighs `importance_val^i`."""
    return importance_val ** torch.arange(n_features, device=device, dtype=torch.float32)


def readoff_loss(out: Tensor, labels: Tensor, importances: Tensor) -> Tensor:
    """Mean over batch, instances and features of `imp_i (out - labels)^2`."""
    return (importances * (out - labels) ** 2).mean()


def resid_stream_loss(model: ResidMLP, x: Tensor, labels: Tensor) -> Tensor:
    """Mean squared distance between the final residual stream and `labels @ W_E`."""
    r = model.embed(x)
    for i in range(model.n_layers):
        r = r + model.apply_layer(f"mlp_out_{i}", F.relu(model.apply_layer(f"mlp_in_{i}", r, None)), None)
    return ((r - model.embed(labels)) ** 2).mean()


# ---------------------------------------------------------------------------------------------
# Evaluation (docs/method.md, residual MLP metrics)


def sample_top1_mask(attr: Tensor) -> Tensor:
    """Each sample's most important component, none where every importance is zero: `(batch, I, C)` bool."""
    top = torch.zeros_like(attr, dtype=torch.bool).scatter_(-1, attr.topk(1, dim=-1).indices, True)
    return top & (attr > 0)


@dataclass
class ResidSampleLosses:
    """What the pass over training batches collects (docs/method.md)."""

    per_sample: dict[str, list[Tensor]] = field(default_factory=dict)
    """`scrubbed`, `anti_scrubbed`, `mono_baseline`, `zero`: per-sample MSE vs target `(batch, I)`."""
    per_feature_sums: dict[str, Tensor] = field(default_factory=dict)
    """`top1_vs_target`, `top1_vs_labels`, `target_vs_labels`: summed MSEs `(I, f)`."""
    per_feature_counts: Tensor | None = None
    """`(I, f)` samples with exactly that one feature active."""


def _one_group(importances: Mapping[str, Tensor]) -> Tensor:
    if len(importances) != 1:
        raise NotImplementedError(f"residual-MLP evaluation of {len(importances)} component groups")
    return next(iter(importances.values()))


def resid_sample_losses(ctx: EvalContext, target: ResidMLP, feature_map: Tensor) -> ResidSampleLosses:
    """Scrubbing losses on `scrub_batches` training batches and top-1 losses on their single-active samples."""
    ev, comps, n_f = ctx.ev, ctx.components, target.n_features
    C = comps.C
    labels = ctx.labels or target.labels
    out = ResidSampleLosses()
    for _ in range(ev.scrub_batches):
        x = ctx.sample(ev.scrub_batch_size or ctx.cfg.batch_size)
        tgt, y = target(x), labels(x)
        keep = torch.rand(*x.shape[:2], C, generator=ctx.generator, device=ctx.generator.device).to(x.device)
        scrub, anti = scrub_masks(keep < SCRUB_KEEP_PROB, forced_components(x, feature_map, C))
        batch_losses = {
            "scrubbed": per_sample_mse(masked_output(target, comps, x, scrub), tgt),
            "anti_scrubbed": per_sample_mse(masked_output(target, comps, x, anti), tgt),
            "mono_baseline": per_sample_mse(monosemantic_baseline(x, y, target.d_mlp * target.n_layers), tgt),
            "zero": tgt.pow(2).mean(-1),
        }
        for k, v in batch_losses.items():
            out.per_sample.setdefault(k, []).append(v)

        # top-1 on the samples with exactly one active feature (in any instance); a sample whose
        # attributions are all zero keeps no component rather than an arbitrary first one
        single, feature = single_active_feature(x)
        rows = single.any(dim=-1)
        xs = x[rows]
        if xs.shape[0] == 0:
            continue
        attr = _one_group(ctx.importances(xs))
        out1 = masked_output(target, comps, xs, sample_top1_mask(attr))
        pairs = {
            "top1_vs_target": (out1, tgt[rows]),
            "top1_vs_labels": (out1, y[rows]),
            "target_vs_labels": (tgt[rows], y[rows]),
        }
        for k, (a, b) in pairs.items():
            sums, counts = per_feature_sums(per_sample_mse(a, b), feature[rows], single[rows], n_f)
            out.per_feature_sums[k] = out.per_feature_sums.get(k, 0) + sums
        out.per_feature_counts = counts if out.per_feature_counts is None else out.per_feature_counts + counts
    return out


@dataclass
class ResidFigureData:
    """Host arrays of the residual-MLP figures, indexed by instance first (except `neuron_layer`)."""

    contrib_target: np.ndarray
    contrib_best_component: np.ndarray
    best_component: np.ndarray
    neuron_layer: np.ndarray
    features_per_component: np.ndarray
    feature_map: np.ndarray
    contribution_cutoff: float
    sample_losses: dict[str, np.ndarray]
    """`scrubbed`, `anti_scrubbed`, `mono_baseline`, `zero`: `(samples, I)`."""
    per_feature_mse: dict[str, np.ndarray]
    """`top1_vs_target`, `top1_vs_labels`, `target_vs_labels`: `(I, f)`."""
    per_feature_counts: np.ndarray
    norm_top1_mse: np.ndarray
    norm_top1_mse_max: float


def _host(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Several component groups (SPD: one group per matrix)

PER_MATRIX_KEY = "n_component_groups"
"""Written only when the components come in several groups (one per matrix): those runs are judged
by the per-matrix checks (target-solution error, neuron contributions); single-group runs (APD) by
the contribution, feature-map, top-1 and scrubbing checks, as before."""


PER_MATRIX_KEYS = (
    PER_MATRIX_KEY,
    "target_solution_error",
    "target_solution_error_0p2",
    "target_solution_error_per_instance",
    "target_solution_error_0p2_per_instance",
    "target_solution_error_by_group",
    "contribution_r",
    "contribution_slope",
    "contribution_r_per_instance",
    "contribution_slope_per_instance",
)
"""Only for components grouped per matrix (their checks' outcomes too: `check_target_solution_per_instance`, ...)."""


def _per_matrix(metrics: Mapping[str, Any], ev: Any) -> bool:
    return (finite_number(metrics.get(PER_MATRIX_KEY)) or 1) > 1


def _spanning(metrics: Mapping[str, Any], ev: Any) -> bool:
    return not _per_matrix(metrics, ev)


def _spans_layers(components: Decomposition) -> bool:
    """One group holds every layer (APD); else each matrix is its own group (SPD)."""
    return len(components.groups) == 1


def contribution_fit(target: Tensor, best: Tensor) -> tuple[Tensor, Tensor]:
    """Pearson r and slope through the origin of `best` against `target` over features and neurons,
    per instance: `(I, f, N)` each -> `(I,)`, `(I,)` (a perfect copy: r 1, slope 1)."""
    t, b = target.flatten(1).double(), best.flatten(1).double()
    tc, bc = t - t.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    r = (tc * bc).sum(-1) / (tc.norm(dim=-1) * bc.norm(dim=-1)).clamp_min(1e-30)
    slope = (t * b).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-30)
    return r.float(), slope.float()


@dataclass
class ResidMatrixFigureData:
    """Host arrays of the per-matrix residual-MLP figures, indexed by instance first."""

    contrib_target: np.ndarray
    """`(I, f, N)` the target's neuron contributions (neurons of all layers, layer 0 first)."""
    contrib_best: np.ndarray
    """`(I, f, N)` each layer's best W_in subcomponent's contributions, with the layer's whole W_out."""
    best: np.ndarray
    """`(I, layers, f)` the best W_in subcomponent c*(l, f) of each layer and feature."""
    neuron_layer: np.ndarray
    r: np.ndarray
    slope: np.ndarray


def evaluate_per_matrix(ctx: EvalContext, target: ResidMLP) -> tuple[dict[str, Any], ResidMatrixFigureData]:
    """The target-solution error and neuron contributions of components grouped per matrix (docs/method.md).

    Identity pattern on every `mlp_in` (one subcomponent per feature), dense pattern of k = d_mlp
    columns on every `mlp_out`, on the importances of `ONE_HOT_VALUE` one-hot inputs, at `identity_tol`
    (and at 0.2, stored beside). Contributions per layer l, feature f, neuron n: subcomponent c of
    `mlp_in_l` read through `W_E`, written back through the layer's whole (summed) `mlp_out_l`;
    `c*(l, f) = argmax_c max_n`, layers matched independently; r and slope of those against the
    target's own contributions, over every feature and neuron.
    """
    from apd.metrics.feature_map import one_hot_inputs
    from apd.metrics.target_solution import ONE_HOT_VALUE, dense_error, identity_error

    ev, comps = ctx.ev, ctx.components
    n_f, n_inst, device = target.n_features, target.n_instances, target.get_buffer("W_E").device
    ci = {g: a.transpose(0, 1) for g, a in ctx.importances(one_hot_inputs(n_f, n_inst, device) * ONE_HOT_VALUE).items()}
    errors: dict[str, dict[str, np.ndarray]] = {}
    for tag, tol in (("", ev.identity_tol), ("_0p2", 0.2)):
        for group, layers in comps.groups.items():
            if all(layer.startswith("mlp_in") for layer in layers):
                errors.setdefault(tag, {})[group] = identity_error(ci[group], tol)
            elif all(layer.startswith("mlp_out") for layer in layers):
                errors.setdefault(tag, {})[group] = dense_error(ci[group], target.d_mlp, tol)
    total = {tag: np.sum(list(per.values()), axis=0) for tag, per in errors.items()}

    w_e = target.get_buffer("W_E").detach()
    weights = {p: w.detach() for p, w in target.weights().items()}
    tgt, best_contrib, best = [], [], []
    for k in range(target.n_layers):
        t = neuron_contributions(w_e, [weights[f"mlp_in_{k}"].unsqueeze(1)], [weights[f"mlp_out_{k}"].unsqueeze(1)])
        c = neuron_contributions(
            w_e,
            [comps.component_weights(f"mlp_in_{k}").detach()],
            [comps.total_weight(f"mlp_out_{k}").detach().unsqueeze(1)],
        )  # (I, C, f, n)
        b = best_component_per_feature(c)  # (I, f)
        tgt.append(t.squeeze(1))
        best_contrib.append(c.gather(1, b[:, None, :, None].expand(-1, 1, -1, c.shape[-1])).squeeze(1))
        best.append(b)
    contrib_target, contrib_best = torch.cat(tgt, dim=-1), torch.cat(best_contrib, dim=-1)
    r, slope = contribution_fit(contrib_target, contrib_best)
    metrics: dict[str, Any] = {
        PER_MATRIX_KEY: len(comps.groups),
        "target_solution_error": int(total[""].sum()),
        "target_solution_error_0p2": int(total["_0p2"].sum()),
        "target_solution_error_per_instance": total[""],
        "target_solution_error_0p2_per_instance": total["_0p2"],
        "target_solution_error_by_group": {g: int(v.sum()) for g, v in errors[""].items()},
        "contribution_r": r.mean(),
        "contribution_slope": slope.mean(),
        "contribution_r_per_instance": r,
        "contribution_slope_per_instance": slope,
    }
    data = ResidMatrixFigureData(
        contrib_target=_host(contrib_target),
        contrib_best=_host(contrib_best),
        best=_host(torch.stack(best, dim=1)).astype(np.int64),
        neuron_layer=np.repeat(np.arange(target.n_layers), target.d_mlp),
        r=_host(r),
        slope=_host(slope),
    )
    return metrics, data


class ResidMLPFamily(Family):
    kind = "resid_mlp"
    label = "residual MLP"
    spec_type = ResidMLPSpec
    metric_keys = (
        "dedicated_fraction",
        "n_dedicated_not_mono",
        "n_mono",
        "n_duo",
        "n_poly",
        "n_dead",
        "n_represented",
        "median_norm_top1_mse",
        "scrubbed_loss",
        "anti_scrubbed_loss",
        "scrub_ratio",
        "dedicated_fraction_per_instance",
        "n_dedicated_not_mono_per_instance",
        "median_norm_top1_mse_per_instance",
        "scrub_ratio_per_instance",
        *PER_MATRIX_KEYS,
    )
    checks = (
        *(
            replace(check, applies=_spanning)
            for check in (
                at_least(
                    "dedicated",
                    "shared components (low dedicated fraction)",
                    "dedicated_fraction_per_instance",
                    "dedicated_min",
                    "dedicated fraction",
                ),
                Check(
                    "dedicated_mono",
                    "polysemantic dedicated components",
                    ("n_dedicated_not_mono_per_instance",),
                    lambda v, ev: v[0] == 0,
                    lambda ev: (
                        f"every dedicated component monosemantic (contribution cutoff {ev.contribution_cutoff:g})"
                    ),
                ),
                at_most(
                    "top1_mse",
                    "poor top-1 reconstruction",
                    "median_norm_top1_mse_per_instance",
                    "norm_top1_mse_max",
                    "median normalised top-1 MSE",
                ),
                at_least(
                    "scrub_ratio", "weak scrub separation", "scrub_ratio_per_instance", "scrub_ratio_min", "scrub ratio"
                ),
            )
        ),
        Check(
            "target_solution",
            "target-solution pattern errors",
            ("target_solution_error_per_instance",),
            lambda v, ev: v[0] == 0,
            lambda ev: (
                f"target-solution error 0 (tolerance {ev.identity_tol:g}): one W_in subcomponent per feature, "
                "W_out dense over d_mlp subcomponents"
            ),
            _per_matrix,
        ),
        Check(
            "contribution_r",
            "neuron contributions off the target's",
            ("contribution_r_per_instance",),
            lambda v, ev: v[0] >= ev.contribution_r_min,
            lambda ev: f"neuron contributions of c*(l, f) vs the target's: Pearson r >= {ev.contribution_r_min:g}",
            _per_matrix,
        ),
        Check(
            "contribution_slope",
            "neuron contributions scaled",
            ("contribution_slope_per_instance",),
            lambda v, ev: ev.contribution_slope_min <= v[0] <= ev.contribution_slope_max,
            lambda ev: (
                "neuron contributions of c*(l, f) vs the target's: slope in "
                f"[{ev.contribution_slope_min:g}, {ev.contribution_slope_max:g}]"
            ),
            _per_matrix,
        ),
    )
    columns = (
        Column(
            "dedicated_fraction",
            "dedicated fraction (share of features)",
            lambda ev: ev.dedicated_min,
            "high",
            median=True,
        ),
        Column("n_mono", "monosemantic components (count)"),
        Column("n_duo", "duosemantic components (count)"),
        Column("n_poly", "polysemantic components (count)"),
        Column("n_dead", "dead components (count)"),
        Column("median_norm_top1_mse", "median top-1 MSE / target MSE (ratio)", lambda ev: ev.norm_top1_mse_max),
        Column("scrub_ratio", "anti-scrubbed / scrubbed loss (ratio)", lambda ev: ev.scrub_ratio_min),
        Column("target_solution_error", "target-solution error (count, 0 = the ground truth's pattern)"),
        Column("contribution_r", "neuron contribution r (1 = the target's)", lambda ev: ev.contribution_r_min, "high"),
    )
    marker_keys = ("dedicated_fraction_per_instance",)
    summary_keys = ("dedicated_fraction", "n_mono", "n_duo", "n_poly", "n_dead", "scrub_ratio")

    def build(self, spec: Any, seed: int = 0) -> Target:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            return ResidMLP(
                spec.n_features,
                spec.d_embed,
                spec.d_mlp,
                spec.n_layers,
                spec.n_instances,
                label_coeffs=resid_label_coeffs(spec),
                label_type=spec.label_type,
            )

    def recipe(self, spec: Any) -> TrainRecipe | None:
        return spec.train

    def train_loss(self, spec: Any, model: Target, x: Tensor) -> Tensor:
        assert isinstance(model, ResidMLP)
        labels = model.labels(x)
        if spec.loss_type == "resid":
            return resid_stream_loss(model, x, labels)
        return readoff_loss(model(x), labels, feature_importances(spec.n_features, spec.importance_val, x.device))

    def describe(self, spec: Mapping[str, Any]) -> str:
        n = spec.get("n_layers")
        if not isinstance(n, int):
            return self.label
        return f"residual MLP, {n} layer{'s' if n > 1 else ''}"

    def identity_layers(self, model: Target) -> tuple[str, ...]:
        """Each feature reads in through its own components; the write-out is shared (dense)."""
        return tuple(layer.name for layer in model.layers if layer.name.startswith("mlp_in"))

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        """Contributions, feature map, per-feature top-1 losses and scrubbing (docs/method.md)."""
        target = ctx.target
        assert isinstance(target, ResidMLP)
        if not _spans_layers(ctx.components):
            return evaluate_per_matrix(ctx, target)
        ev, comps = ctx.ev, ctx.components
        C, n_f, n_inst = comps.C, target.n_features, target.n_instances
        onehot_attr = _one_group(ctx.onehot)
        weights = {p: w.detach() for p, w in target.weights().items()}
        layers = range(target.n_layers)
        w_e = target.get_buffer("W_E").detach()
        tgt_contrib = neuron_contributions(
            w_e,
            [weights[f"mlp_in_{k}"].unsqueeze(1) for k in layers],
            [weights[f"mlp_out_{k}"].unsqueeze(1) for k in layers],
        ).squeeze(1)  # (I, f, N)
        comp_contrib = neuron_contributions(
            w_e,
            [comps.component_weights(f"mlp_in_{k}").detach() for k in layers],
            [comps.component_weights(f"mlp_out_{k}").detach() for k in layers],
        )  # (I, C, f, N)
        represents = represented_features(comp_contrib, ev.contribution_cutoff)
        poly = polysemanticity(represents)
        fmap = feature_component_map(onehot_attr)
        dedicated = dedicated_features(fmap, C)
        not_mono = dedicated_not_mono(fmap, dedicated, represents)

        res = resid_sample_losses(ctx, target, fmap)
        nan = torch.full((n_inst, n_f), float("nan"), device=onehot_attr.device)
        pf_mse = {  # NaN where a feature had no single-active sample
            k: res.per_feature_sums[k] / res.per_feature_counts if res.per_feature_counts is not None else nan
            for k in ("top1_vs_target", "top1_vs_labels", "target_vs_labels")
        }
        norm = normalized_mse(pf_mse["top1_vs_target"], pf_mse["target_vs_labels"])
        median_norm = norm.nanmedian(dim=-1).values  # (I,)
        sample_losses = {k: torch.cat(v) for k, v in res.per_sample.items()}  # (samples, I)
        scrubbed, anti = sample_losses["scrubbed"].mean(0), sample_losses["anti_scrubbed"].mean(0)
        ratio = anti / scrubbed.clamp_min(1e-12)
        dedicated_frac = dedicated.sum(-1).cpu().numpy() / n_f  # exact fractions of counts

        metrics: dict[str, Any] = {
            "dedicated_fraction": float(dedicated_frac.mean()),
            "n_dedicated_not_mono": not_mono.sum(),
            "n_mono": poly.n_mono.sum(),
            "n_duo": poly.n_duo.sum(),
            "n_poly": poly.n_poly.sum(),
            "n_dead": poly.n_dead.sum(),
            "n_represented": poly.n_represented.sum(),
            "median_norm_top1_mse": median_norm.mean(),
            "scrubbed_loss": scrubbed.mean(),
            "anti_scrubbed_loss": anti.mean(),
            "scrub_ratio": ratio.mean(),
            "dedicated_fraction_per_instance": dedicated_frac,
            "n_dedicated_not_mono_per_instance": not_mono,
            "median_norm_top1_mse_per_instance": median_norm,
            "scrub_ratio_per_instance": ratio,
        }
        best = best_component_per_feature(comp_contrib)  # (I, f)
        contrib_best = comp_contrib.gather(1, best[:, None, :, None].expand(-1, 1, -1, comp_contrib.shape[-1]))
        counts = res.per_feature_counts if res.per_feature_counts is not None else torch.zeros_like(nan)
        data = ResidFigureData(
            contrib_target=_host(tgt_contrib),
            contrib_best_component=_host(contrib_best.squeeze(1)),
            best_component=_host(best).astype(np.int64),
            neuron_layer=np.repeat(np.arange(target.n_layers), target.d_mlp),
            features_per_component=_host(represents.sum(-1)).astype(np.int64),
            feature_map=_host(fmap).astype(np.int64),
            contribution_cutoff=ev.contribution_cutoff,
            sample_losses={k: _host(v) for k, v in sample_losses.items()},
            per_feature_mse={k: _host(v) for k, v in pf_mse.items()},
            per_feature_counts=_host(counts).astype(np.int64),
            norm_top1_mse=_host(norm),
            norm_top1_mse_max=ev.norm_top1_mse_max,
        )
        return metrics, data

    def figures(
        self, model: Target, components: Decomposition, metrics: Mapping[str, Any], data: Any, out_dir: Path, n: int
    ) -> list[Path]:
        from apd.figures import categories_figure, contributions_figure, per_feature_figure, scrub_figure

        if isinstance(data, ResidMatrixFigureData):
            return self._per_matrix_figures(model, data, out_dir, n)
        d: ResidFigureData = data
        paths = []
        for i in range(n):
            tag = f"instance {i}" if model.n_instances > 1 else "run"
            paths.append(
                contributions_figure(
                    d.contrib_target[i],
                    d.contrib_best_component[i],
                    d.best_component[i],
                    d.neuron_layer,
                    f"Residual MLP {tag}: neuron contributions of the first features",
                    out_dir / f"resid_contributions_inst{i}.png",
                )
            )
            losses = {k: v[:, i] for k, v in d.sample_losses.items()}
            paths.append(
                scrub_figure(
                    losses,
                    f"Residual MLP {tag}: scrubbed vs anti-scrubbed ablation",
                    out_dir / f"scrub_losses_inst{i}.png",
                )
            )
            paths.append(
                per_feature_figure(
                    d.per_feature_mse["target_vs_labels"][i],
                    d.per_feature_mse["top1_vs_labels"][i],
                    d.norm_top1_mse[i],
                    d.norm_top1_mse_max,
                    f"Residual MLP {tag}: per-feature losses",
                    out_dir / f"per_feature_losses_inst{i}.png",
                )
            )
            paths.append(
                categories_figure(
                    d.features_per_component[i],
                    d.contribution_cutoff,
                    f"Residual MLP {tag}: component categories",
                    out_dir / f"component_categories_inst{i}.png",
                )
            )
        return paths

    def _per_matrix_figures(self, model: Target, d: ResidMatrixFigureData, out_dir: Path, n: int) -> list[Path]:
        """Neuron contributions of components grouped per matrix: the scatter and the first features' bars."""
        from apd.figures import contribution_scatter_figure, contributions_figure

        paths = []
        for i in range(n):
            tag = f"instance {i}" if model.n_instances > 1 else "run"
            paths.append(
                contribution_scatter_figure(
                    d.contrib_target[i],
                    d.contrib_best[i],
                    d.neuron_layer,
                    float(d.r[i]),
                    float(d.slope[i]),
                    f"Residual MLP {tag}: neuron contributions, subcomponents vs target",
                    out_dir / f"resid_contribution_scatter_inst{i}.png",
                )
            )
            paths.append(
                contributions_figure(
                    d.contrib_target[i],
                    d.contrib_best[i],
                    d.best[i, 0],
                    d.neuron_layer,
                    f"Residual MLP {tag}: neuron contributions of the first features (c* of layer 0)",
                    out_dir / f"resid_contributions_inst{i}.png",
                )
            )
        return paths


__all__ = ["ResidMLP", "ResidMLPFamily", "ResidMLPSpec", "resid_labels"]
