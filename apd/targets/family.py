"""Target families: the one place that knows a kind of target network and its ground truth.

A family (TMS, residual MLP, gated functions, user file, ...) owns, in ONE module
(`apd/targets/<kind>.py`): its network (a `Target` subclass whose `kind` names the family), its
spec (a `TargetSpec` subclass tagged by `kind`), the training recipe and loss, the task labels,
and its ground truth: the metrics it adds to `metrics.json` and how they are computed from any
method's `Decomposition`, the named checks of its verdict (each with its failure-mode name), the
columns reports show (labels, units, thresholds), the true mechanisms where they are known, and
the per-run figures.

How to add a family:

1. Write `apd/targets/<kind>.py` with
   * the network: subclass `Target` (`apd.targets.base`), set `kind = "<kind>"`, the layer list and
     `forward`; override `labels` if the network was trained on a task and `sample` if its inputs
     are not sparse features;
   * the spec: subclass `TargetSpec` with `kind: Literal["<kind>"] = "<kind>"` and one field per
     size or option. Every field can then be overridden from a config (`target.<field>: ...`),
     from the command line (`--set target.<field>=...`) and swept (`parameters: {target.<field>: ...}`);
   * the family: subclass `Family`, set `kind`, `label`, `spec_type`, `metric_keys`, `checks` and
     `columns`, and implement `build` and `evaluate`; `recipe`/`train_loss` if the network is
     trained, `mechanisms` if its true components are known (then `mechanism_metrics` and the
     `MECHANISM_CHECKS` give it the weight-matching verdict for free), `figures`, `describe`.
2. Add one line to `FAMILIES` in `apd/targets/registry.py`, or call `register_family(MyFamily())`.

Nothing else changes: the training loop, evaluation (`apd.metrics.evaluate`), the verdict
(`apd.metrics.verdict.decide`), the CLI summary, the sweep results and the analysis report read
what the family declares; none of them branches on a family.

Components come in *groups* (`Decomposition.groups`: APD has one group spanning every layer, SPD
one group per matrix); `evaluate` gets the method's importances per group, and the helpers here
(`mechanism_metrics`) score each group against the true mechanisms of the layers it covers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import torch
from pydantic import model_validator
from torch import Tensor

from apd.config import BaseConfig, EvalConfig, NonNegativeFloat, PositiveFloat, PositiveInt
from apd.errors import ApdError, ConfigError
from apd.targets.base import Target

if TYPE_CHECKING:
    from apd.config import MethodConfig
    from apd.methods.base import Decomposition

ValueRange = tuple[float, float]
Sampler = Callable[[int], Tensor]
Labeler = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------
# Specs


class TrainRecipe(BaseConfig):
    """AdamW training of a target on its own data (docs/method.md)."""

    steps: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    lr_schedule: Literal["constant", "linear", "cosine"]
    """`linear` 1 - t/T (TMS code), `cosine` cos(pi t / (2 (T - 1))) (resid code), see apd.schedules."""
    weight_decay: NonNegativeFloat = 0.01


class TargetSpec(BaseConfig):
    """Base of every family's spec: everything needed to rebuild a target, tagged by `kind`."""

    kind: str
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> Self:
        vr = getattr(self, "value_range", None)
        if vr is not None and vr[0] > vr[1]:
            raise ValueError(f"value_range must be (lo, hi) with lo <= hi (got {vr})")
        return self

    def cache_key(self) -> str:
        """A short hash of the spec without its description: the cache name of an overridden spec."""
        data = {k: v for k, v in self.to_dict().items() if k != "description"}
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# Verdict checks and report columns (pure: they read stored metrics only)


Values = Sequence[Any]


@dataclass(frozen=True)
class Check:
    """One named predicate of a family's verdict, judged per model instance from stored metrics.

    `reads` are metrics.json keys; a key ending in `_per_instance` is read at the instance's index.
    A missing, None, NaN, infinite or non-numeric value fails the check (`passes` is not called).
    """

    name: str
    """Identifier; the run stores the outcome as `check_<name>_per_instance`."""
    failure: str
    """The failure mode an instance failing this check counts under."""
    reads: tuple[str, ...]
    passes: Callable[[Values, EvalConfig], bool]
    rule: Callable[[EvalConfig], str]
    """The rule in words with the thresholds in use, for reports."""
    applies: Callable[[Mapping[str, Any], EvalConfig], bool] = lambda metrics, ev: True

    @property
    def stored_key(self) -> str:
        return f"check_{self.name}_per_instance"


def at_least(name: str, failure: str, key: str, field: str, label: str) -> Check:
    """`key >= eval.<field>` per instance."""
    return Check(
        name,
        failure,
        (key,),
        lambda v, ev: v[0] >= getattr(ev, field),
        lambda ev: f"{label} >= {getattr(ev, field):g}",
    )


def at_most(name: str, failure: str, key: str, field: str, label: str) -> Check:
    """`key <= eval.<field>` per instance."""
    return Check(
        name,
        failure,
        (key,),
        lambda v, ev: v[0] <= getattr(ev, field),
        lambda ev: f"{label} <= {getattr(ev, field):g}",
    )


IDENTITY_CHECK = Check(
    "identity",
    "identity-pattern errors",
    ("identity_error_per_instance",),
    lambda v, ev: v[0] == 0,
    lambda ev: f"identity-pattern error 0 (tolerance {ev.identity_tol:g})",
)
"""A clean one-hot importance pattern: one component per feature (docs/method.md)."""

MECHANISM_CHECKS = (
    at_most(
        "split",
        "split features",
        "split_share_per_instance",
        "split_max",
        "no split: a second component's share of any true mechanism",
    ),
    at_least(
        "mechanism_cos",
        "weights off the true mechanisms",
        "mechanism_cos_per_instance",
        "mechanism_cos_min",
        "every true mechanism's matched component: cosine",
    ),
    Check(
        "mechanism_norm",
        "mechanism norm out of range",
        ("mechanism_norm_min_per_instance", "mechanism_norm_max_per_instance"),
        lambda v, ev: ev.mechanism_norm_min <= v[0] and v[1] <= ev.mechanism_norm_max,
        lambda ev: (
            "every true mechanism's matched component: norm ratio in "
            f"[{ev.mechanism_norm_min:g}, {ev.mechanism_norm_max:g}]"
        ),
    ),
)
"""Weight matching against known true mechanisms (see `mechanism_metrics`)."""


@dataclass(frozen=True)
class Column:
    """A metric the reports show for a family: a scalar metrics.json key, its label with unit."""

    key: str
    label: str
    threshold: Callable[[EvalConfig], float | None] | None = None
    """The verdict threshold drawn beside it (None: none)."""
    better: Literal["high", "low"] | None = None
    """Ranks trials (best trial) when set."""
    median: bool = False
    """Shown as a median over completed seeds in the settings tables."""


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalContext:
    """What a family's `evaluate` gets: the decomposition, the method's importances and the data."""

    cfg: MethodConfig
    target: Target
    components: Decomposition
    importances: Callable[[Tensor], dict[str, Tensor]]
    """The method's detached importances `(batch, I, C)` per group for inputs `(batch, I, n_inputs)`."""
    onehot: dict[str, Tensor]
    """Importances of the one-hot inputs per group, `(I, n_inputs, C)`."""
    sample: Sampler
    """Draws training-distribution inputs `(batch, I, n_inputs)` on the device."""
    generator: torch.Generator
    labels: Labeler | None

    @property
    def ev(self) -> EvalConfig:
        return self.cfg.eval


def group_params(target: Target, components: Decomposition, group: str) -> list[str]:
    """The decomposed parameters the layers of `group` use (a tied layer counts its parameter once)."""
    layers = set(components.groups[group])
    return list(dict.fromkeys(layer.param for layer in target.layers if layer.name in layers))


def mechanism_metrics(
    target: Target, components: Decomposition, mechanisms: Mapping[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Component weights against the true mechanisms, per group; the worst case per instance.

    `mechanisms[param]` is `(I, K, d_in, d_out)`: mechanism k's part of the parameter (the same K
    for every parameter given). Each group is scored on the given parameters its layers use.
    Returns the metrics read by `MECHANISM_CHECKS` and, per group, the `MechanismMatch`.
    """
    from apd.metrics.mechanisms import match_mechanisms

    worst: dict[str, Tensor] = {}
    matches = {}
    for group in components.groups:
        params = [p for p in group_params(target, components, group) if p in mechanisms]
        if not params:
            continue
        true = torch.cat([mechanisms[p].detach().flatten(2) for p in params], dim=-1)
        comps = torch.cat([components.component_weights(p).detach().flatten(2) for p in params], dim=-1)
        m = match_mechanisms(true.to(comps), comps)
        matches[group] = m
        present = m.present  # (I, K): mechanisms with weights in this group
        big, small = torch.tensor(float("inf")), torch.tensor(float("-inf"))
        per = {
            "mechanism_cos_per_instance": torch.where(present, m.cos, big.to(m.cos)).amin(-1),
            "mechanism_norm_min_per_instance": torch.where(present, m.norm_ratio, big.to(m.cos)).amin(-1),
            "mechanism_norm_max_per_instance": torch.where(present, m.norm_ratio, small.to(m.cos)).amax(-1),
            "split_share_per_instance": torch.where(present, m.split, small.to(m.cos)).amax(-1),
        }
        for key, value in per.items():  # the worst group decides
            lower = key in ("mechanism_cos_per_instance", "mechanism_norm_min_per_instance")
            worst[key] = value if key not in worst else (torch.minimum if lower else torch.maximum)(worst[key], value)
    if not worst:
        raise ApdError("the true mechanisms cover no decomposed parameter of any component group")
    metrics: dict[str, Any] = {k.removesuffix("_per_instance"): v.mean() for k, v in worst.items()}
    return {**metrics, **worst}, matches


MECHANISM_KEYS = (
    "mechanism_cos",
    "mechanism_norm_min",
    "mechanism_norm_max",
    "split_share",
    "mechanism_cos_per_instance",
    "mechanism_norm_min_per_instance",
    "mechanism_norm_max_per_instance",
    "split_share_per_instance",
)
MECHANISM_COLUMNS = (
    Column("mechanism_cos", "worst matched mechanism cosine (1 = aligned)", lambda ev: ev.mechanism_cos_min, "high"),
    Column("split_share", "largest split share (second component / mechanism)", lambda ev: ev.split_max),
)


# ---------------------------------------------------------------------------------------------
# The family interface


class Family:
    """A kind of target network and its ground truth; see the module docstring for how to add one."""

    kind: ClassVar[str]
    label: ClassVar[str]
    """In words, for reports (e.g. `TMS`)."""
    spec_type: ClassVar[type[TargetSpec]]
    metric_keys: ClassVar[tuple[str, ...]]
    """Every metrics.json key `evaluate` may add (besides the common ones of `apd.metrics.keys`)."""
    checks: ClassVar[tuple[Check, ...]]
    """The verdict: an instance is recovered when every applicable check passes."""
    columns: ClassVar[tuple[Column, ...]] = ()
    summary_keys: ClassVar[tuple[str, ...]] = ()
    """Metrics the `apd decompose` summary line prints."""
    marker_keys: ClassVar[tuple[str, ...]] = ()
    """Keys only this family's metrics hold: they recognise results written before metrics named their family."""
    cacheable: ClassVar[bool] = True
    """`apd train-target` can write the network to the cache (False: it lives in the user's own file)."""

    # -- the network

    def build(self, spec: Any, seed: int = 0) -> Target:
        """A fresh (or hand-set) network on the CPU; `seed` fixes its initialisation."""
        raise NotImplementedError

    def recipe(self, spec: Any) -> TrainRecipe | None:
        """How to train it; None when `materialize` gives the finished network (hand-set, file)."""
        return None

    def materialize(self, spec: Any, seed: int) -> tuple[TargetSpec, Target]:
        """The finished network of a spec without a recipe, and the spec with its data defaults filled in."""
        return spec, self.build(spec, seed)

    def train_loss(self, spec: Any, model: Target, x: Tensor) -> Tensor:
        """The training loss of the recipe on inputs `x`."""
        raise NotImplementedError(f"{self.kind} targets are not trained")

    def from_arrays(self, data: Mapping[str, Any], path: Path) -> Target:
        """A network from a user file's entries (`apd.targets.file` dispatches on its `kind` entry)."""
        raise ConfigError(f"{path}: kind: {self.kind} targets have no user-file format")

    def describe(self, spec: Mapping[str, Any]) -> str:
        """A short name for reports, from the spec's dict form (e.g. `TMS 5-2`)."""
        return self.label

    def n_instances(self, spec: Mapping[str, Any]) -> int | None:
        """Model instances of a network of this spec (None: only known once loaded)."""
        n = spec.get("n_instances", 1)
        return int(n) if isinstance(n, int) else None

    # -- the ground truth

    def identity_layers(self, model: Target) -> tuple[str, ...]:
        """Layers whose components should each serve one feature: a group covering any of them gets the
        identity-pattern error (`apd.metrics.identity`)."""
        return tuple(layer.name for layer in model.layers)

    def mechanisms(self, model: Target) -> dict[str, Tensor] | None:
        """The true mechanisms, per decomposed parameter `(I, K, d_in, d_out)`; None when unknown."""
        return None

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        """The family's metrics (tensors or numbers; `*_per_instance` lists per instance) and figure data."""
        raise NotImplementedError

    def figures(
        self, model: Target, components: Decomposition, metrics: Mapping[str, Any], data: Any, out_dir: Path, n: int
    ) -> list[Path]:
        """Per-run figures of the first `n` instances from `evaluate`'s figure data; PNG paths."""
        return []

    def active_checks(self, metrics: Mapping[str, Any], ev: EvalConfig) -> list[Check]:
        return [c for c in self.checks if c.applies(metrics, ev)]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (not a bool, string or list), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        item = getattr(value, "item", None)  # numpy and torch scalars
        if item is None or getattr(value, "shape", ()) != ():
            return None
        value = item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
    return float(value) if math.isfinite(value) else None


__all__ = [
    "IDENTITY_CHECK",
    "MECHANISM_CHECKS",
    "MECHANISM_COLUMNS",
    "MECHANISM_KEYS",
    "Check",
    "Column",
    "EvalContext",
    "Family",
    "TargetSpec",
    "TrainRecipe",
    "ValueRange",
    "at_least",
    "at_most",
    "finite_number",
    "mechanism_metrics",
]
