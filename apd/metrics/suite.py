"""`evaluate`: every ground-truth metric of one decomposition and its verdict (method notes 4, 9).

Dispatches on the target family: TMS (MMCS/ML2R), residual MLP (neuron contributions, feature
map, per-feature and scrubbing losses; single-group methods only, e.g. APD); the identity-pattern
error is computed for every target, per component group and summed.
Tensors stay on the components' device; only the final numbers and figure arrays go to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from apd.config import DecomposeConfig, EvalConfig
from apd.methods import Decomposition, method_of
from apd.metrics.contributions import (
    best_component_per_feature,
    neuron_contributions,
    polysemanticity,
    represented_features,
)
from apd.metrics.feature_map import (
    dedicated_features,
    dedicated_not_mono,
    feature_component_map,
    one_hot_inputs,
)
from apd.metrics.identity import identity_pattern
from apd.metrics.per_feature import normalized_mse, per_feature_sums, single_active_feature
from apd.metrics.scrub import (
    forced_components,
    masked_output,
    monosemantic_baseline,
    per_sample_mse,
    scrub_masks,
)
from apd.metrics.tms import relative_frobenius_error, tms_scores
from apd.metrics.verdict import judge
from apd.targets.base import Target
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

Sampler = Callable[[int], Tensor]
Labeler = Callable[[Tensor], Tensor]
SCRUB_KEEP_PROB = 0.5


def eval_importances(cfg: DecomposeConfig, target: Target, components: Decomposition, x: Tensor) -> Tensor:
    """The method's detached importances `(batch, I, C)` of its one component group (APD: attributions)."""
    groups = method_of(cfg).importances(cfg, target, components, x)
    if len(groups) != 1:
        raise NotImplementedError(f"evaluation of {len(groups)} component groups")
    return next(iter(groups.values()))


def sample_top1_mask(attr: Tensor) -> Tensor:
    """Each sample's most important component, none where every importance is zero: `(batch, I, C)` bool."""
    top = torch.zeros_like(attr, dtype=torch.bool).scatter_(-1, attr.topk(1, dim=-1).indices, True)
    return top & (attr > 0)


def label_fn(target: Target, labels: Labeler | None) -> Labeler | None:
    """The target's training labels: `labels` if given, else `target.labels` if the model has one.

    Residual MLPs fall back to `x + ReLU(x)` (trivial label coefficients, method notes 2.3).
    """
    if labels is not None:
        return labels
    own = getattr(target, "labels", None)
    if callable(own):
        return cast(Labeler, own)
    if isinstance(target, ResidMLP):
        return lambda x: x + F.relu(x)
    return None


def host(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def jsonable(value: Any) -> Any:
    """Plain Python numbers, bools and lists; NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor | np.ndarray | np.generic):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_tms(target: TMS, components: Decomposition) -> tuple[dict[str, Any], dict[str, Any]]:
    """MMCS, ML2R and distinct matches over `linear1`; hidden layers vs the target's matrices."""
    W = target.weights()["linear1"].detach()
    P = components.component_weights("linear1").detach()
    s = tms_scores(W, P)
    metrics: dict[str, Any] = {
        "mmcs": s.mmcs.mean(),
        "ml2r": s.ml2r.mean(),
        "n_distinct": s.n_distinct.float().mean(),
        "mmcs_per_instance": s.mmcs,
        "ml2r_per_instance": s.ml2r,
        "n_distinct_per_instance": s.n_distinct,
    }
    hidden = [p for p in target.weights() if p.startswith("hidden_")]
    if hidden:
        errs = torch.stack(
            [
                relative_frobenius_error(components.total_weight(p).detach(), target.weights()[p].detach())
                for p in hidden
            ]
        ).amax(dim=0)  # worst hidden layer per instance
        metrics["hidden_identity_rel_error"] = errs.mean()
        metrics["hidden_identity_rel_error_per_instance"] = errs
    artifacts = {"tms_W": host(W), "tms_P": host(P), "tms_match": host(s.match).astype(np.int64)}
    return metrics, artifacts


@dataclass
class ResidSampleLosses:
    """What the pass over training batches collects (method notes 4.4, 4.5)."""

    per_sample: dict[str, list[Tensor]] = field(default_factory=dict)
    """`scrubbed`, `anti_scrubbed`, `mono_baseline`, `zero`: per-sample MSE vs target `(batch, I)`."""
    per_feature_sums: dict[str, Tensor] = field(default_factory=dict)
    """`top1_vs_target`, `top1_vs_labels`, `target_vs_labels`: summed MSEs `(I, f)`."""
    per_feature_counts: Tensor | None = None
    """`(I, f)` samples with exactly that one feature active."""


def resid_sample_losses(
    cfg: DecomposeConfig,
    target: ResidMLP,
    components: Decomposition,
    feature_map: Tensor,
    sample: Sampler,
    generator: torch.Generator,
    labels: Labeler,
) -> ResidSampleLosses:
    """Scrubbing losses on `scrub_batches` training batches and top-1 losses on their single-active samples."""
    ev, C, n_f = cfg.eval, components.C, target.n_features
    out = ResidSampleLosses()
    for _ in range(ev.scrub_batches):
        x = sample(ev.scrub_batch_size or cfg.batch_size)
        tgt, y = target(x), labels(x)
        keep = torch.rand(*x.shape[:2], C, generator=generator, device=generator.device).to(x.device)
        scrub, anti = scrub_masks(keep < SCRUB_KEEP_PROB, forced_components(x, feature_map, C))
        batch_losses = {
            "scrubbed": per_sample_mse(masked_output(target, components, x, scrub), tgt),
            "anti_scrubbed": per_sample_mse(masked_output(target, components, x, anti), tgt),
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
        attr = eval_importances(cfg, target, components, xs)
        out1 = masked_output(target, components, xs, sample_top1_mask(attr))
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


def evaluate_resid_mlp(
    cfg: DecomposeConfig,
    target: ResidMLP,
    components: Decomposition,
    onehot_attr: Tensor,
    sample: Sampler,
    generator: torch.Generator,
    labels: Labeler,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Contributions, feature map, per-feature top-1 losses and scrubbing (method notes 4.2-4.5, 9)."""
    ev, C, n_f, n_inst = cfg.eval, components.C, target.n_features, target.n_instances
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
        [components.component_weights(f"mlp_in_{k}").detach() for k in layers],
        [components.component_weights(f"mlp_out_{k}").detach() for k in layers],
    )  # (I, C, f, N)
    represents = represented_features(comp_contrib, ev.contribution_cutoff)
    poly = polysemanticity(represents)
    fmap = feature_component_map(onehot_attr)
    dedicated = dedicated_features(fmap, C)
    not_mono = dedicated_not_mono(fmap, dedicated, represents)

    res = resid_sample_losses(cfg, target, components, fmap, sample, generator, labels)
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
    artifacts: dict[str, Any] = {
        "contrib_target": host(tgt_contrib),
        "contrib_best_component": host(contrib_best.squeeze(1)),
        "best_component": host(best).astype(np.int64),
        "neuron_layer": np.repeat(np.arange(target.n_layers), target.d_mlp),
        "features_per_component": host(represents.sum(-1)).astype(np.int64),
        "feature_map": host(fmap).astype(np.int64),
        "contribution_cutoff": ev.contribution_cutoff,
        **{f"{k}_losses": host(v) for k, v in sample_losses.items()},
        **{f"per_feature_mse_{k}": host(v) for k, v in pf_mse.items()},
        "per_feature_counts": host(counts).astype(np.int64),
        "norm_top1_mse": host(norm),
        "norm_top1_mse_max": ev.norm_top1_mse_max,
    }
    return metrics, artifacts


@torch.no_grad()
def evaluate(
    cfg: DecomposeConfig,
    target: Target,
    components: Decomposition,
    *,
    sample: Sampler,
    generator: torch.Generator | None = None,
    labels: Labeler | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ground-truth metrics (JSON-able, see `apd.metrics.keys`) and the arrays the figures need.

    `sample(batch_size)` draws training-distribution inputs `(batch, instances, n_inputs)` on the
    device; `generator` (default: seeded with `cfg.seed`) draws the scrubbing masks; `labels(x)`
    gives the target's task labels (default: see `label_fn`).
    """
    ev: EvalConfig = cfg.eval
    device = next(components.parameters()).device
    onehot = one_hot_inputs(target.n_inputs, target.n_instances, device)
    groups = method_of(cfg).importances(cfg, target, components, onehot)
    # one identity pattern per component group (SPD: per matrix), counts summed over groups;
    # the first group's pattern is the one drawn
    patterns = [identity_pattern(attr.transpose(0, 1), ev.identity_tol) for attr in groups.values()]
    onehot_attr = next(iter(groups.values())).transpose(0, 1)  # (I, f, C)
    ident = patterns[0]
    error = np.sum([p.error for p in patterns], axis=0)
    metrics: dict[str, Any] = {
        "n_features": target.n_inputs,
        "identity_error": int(error.sum()),
        "identity_off_diag": int(sum(p.off_diag.sum() for p in patterns)),
        "identity_diag_miss": int(sum(p.diag_miss.sum() for p in patterns)),
        "identity_error_per_instance": error,
    }
    artifacts: dict[str, Any] = {
        "onehot_attributions": host(onehot_attr),
        "identity_matrix": ident.matrix,
        "identity_assignment": ident.assignment,
        "identity_tol": ev.identity_tol,
    }
    if isinstance(target, TMS):
        family_metrics, family_artifacts = evaluate_tms(target, components)
    elif isinstance(target, ResidMLP) and len(groups) == 1:  # its metrics assume components span the layers
        gen = generator or torch.Generator(device=device).manual_seed(cfg.seed)
        resid_labels = label_fn(target, labels)
        assert resid_labels is not None  # residual MLPs always have a fallback
        family_metrics, family_artifacts = evaluate_resid_mlp(
            cfg, target, components, onehot_attr, sample, gen, resid_labels
        )
    else:
        family_metrics, family_artifacts = {}, {}
    metrics = jsonable({**metrics, **family_metrics})
    metrics.update(judge(metrics, ev))
    return metrics, {**artifacts, **family_artifacts}
