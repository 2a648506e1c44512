"""`evaluate`: every ground-truth metric of one decomposition and its verdict (docs/method.md).

Method-agnostic here: the identity-pattern error of the method's one-hot importances, per component
group. Everything else comes from the target's family (`Family.evaluate`: TMS MMCS/ML2R and weight
matching, residual-MLP contributions and scrubbing, ...), then the one verdict
(`apd.metrics.verdict`). Tensors stay on the components' device; only the final numbers and
figure arrays go to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apd.config import DecomposeConfig, EvalConfig
from apd.methods import Decomposition, method_of
from apd.metrics.feature_map import one_hot_inputs
from apd.metrics.identity import IdentityPattern, identity_pattern
from apd.metrics.verdict import judge
from apd.targets.base import Target
from apd.targets.family import EvalContext
from apd.targets.registry import family_of_model

Sampler = Callable[[int], Tensor]
Labeler = Callable[[Tensor], Tensor]


@dataclass
class EvalArtifacts:
    """What the figures need besides the metrics."""

    identity: dict[str, IdentityPattern]
    """The identity pattern of each scored component group."""
    identity_tol: float
    family: Any
    """The family's own figure data (`Family.evaluate`'s second value)."""
    onehot: dict[str, np.ndarray] = field(default_factory=dict)
    """Components in several groups (SPD: one per matrix): every group's raw one-hot importances `(I, f, C)`."""
    importance_name: str = "importance"


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


def scored_groups(target: Target, components: Decomposition, layers: tuple[str, ...]) -> list[str]:
    """Groups covering any of `layers` (every group when none does)."""
    wanted = set(layers)
    return [g for g, members in components.groups.items() if wanted & set(members)] or list(components.groups)


@torch.no_grad()
def evaluate(
    cfg: DecomposeConfig,
    target: Target,
    components: Decomposition,
    *,
    sample: Sampler,
    generator: torch.Generator | None = None,
    labels: Labeler | None = None,
) -> tuple[dict[str, Any], EvalArtifacts]:
    """Ground-truth metrics (JSON-able, see `apd.metrics.keys`) and the arrays the figures need.

    `sample(batch_size)` draws training-distribution inputs `(batch, instances, n_inputs)` on the
    device; `generator` (default: seeded with `cfg.seed`) draws the scrubbing masks; `labels(x)`
    gives the target's task labels (default: `target.labels`).
    """
    ev: EvalConfig = cfg.eval
    family = family_of_model(target)
    method = method_of(cfg)
    device = next(components.parameters()).device

    def importances(x: Tensor) -> dict[str, Tensor]:
        return method.importances(cfg, target, components, x)

    onehot = one_hot_inputs(target.n_inputs, target.n_instances, device)
    onehot_attr = {g: a.transpose(0, 1) for g, a in importances(onehot).items()}  # (I, f, C)
    groups = scored_groups(target, components, family.identity_layers(target))
    ident = {g: identity_pattern(onehot_attr[g], ev.identity_tol) for g in groups}
    off = sum(p.off_diag for p in ident.values())
    miss = sum(p.diag_miss for p in ident.values())
    metrics: dict[str, Any] = {
        "family": family.kind,
        "n_features": target.n_inputs,
        "n_instances": target.n_instances,
        "identity_error": int(np.sum(off + miss)),
        "identity_off_diag": int(np.sum(off)),
        "identity_diag_miss": int(np.sum(miss)),
        "identity_error_per_instance": off + miss,
    }
    if len(ident) > 1:
        metrics["identity_error_by_group"] = {g: int(p.error.sum()) for g, p in ident.items()}
    ctx = EvalContext(
        cfg,
        target,
        components,
        importances,
        onehot_attr,
        sample,
        generator or torch.Generator(device=device).manual_seed(cfg.seed),
        labels,
    )
    family_metrics, family_data = family.evaluate(ctx)
    metrics = jsonable({**metrics, **family_metrics})
    metrics.update(judge(metrics, ev))
    every_group = {}
    if len(components.groups) > 1:
        every_group = {g: a.detach().float().cpu().numpy() for g, a in onehot_attr.items()}
    return metrics, EvalArtifacts(ident, ev.identity_tol, family_data, every_group, method.importance_name)
