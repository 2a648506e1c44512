"""THE verdict: one function decides, per model instance, whether a decomposition recovered the
ground truth, and names every check that failed (docs/method.md).

The checks are the target family's (`Family.checks`: named predicates over stored metrics, each
with its failure-mode name); `verdict` reads only numbers that `evaluate` stored, so analysis can
re-judge finished runs with other thresholds, and failure-mode counts derive from its output.
Thresholds that shape a measurement itself (`contribution_cutoff`, `identity_tol`,
`scrub_batches`, `scrub_batch_size`) were applied when the metrics were computed; changing those
needs `evaluate` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apd.config import EvalConfig
from apd.metrics.keys import family_kind


@dataclass(frozen=True)
class Verdict:
    """Which checks judged, and per instance which of them failed."""

    family: str
    checks: tuple[str, ...]
    """The checks that applied, in the family's order."""
    failed: tuple[tuple[str, ...], ...]
    """Per instance, every failed check (empty: recovered)."""
    missing: tuple[tuple[str, ...], ...]
    """Per instance, the failed checks whose metrics were missing, None, NaN or not numbers."""

    @property
    def n_instances(self) -> int:
        return len(self.failed)

    @property
    def recovered_per_instance(self) -> list[bool]:
        return [not f for f in self.failed]

    @property
    def recovered(self) -> float:
        per = self.recovered_per_instance
        return sum(per) / len(per) if per else 0.0

    @property
    def recovered_all(self) -> bool:
        return bool(self.failed) and not any(self.failed)

    def failure_modes(self) -> list[list[str]]:
        """Per instance, the failure mode of every failed check (the family's names)."""
        from apd.targets.registry import get_family

        family = get_family(self.family)
        return [[_failure(family, name) for name in failed] for failed in self.failed]

    def to_metrics(self) -> dict[str, Any]:
        """What `metrics.json` stores: the verdict and the outcome of each check per instance."""
        out: dict[str, Any] = {
            "recovered": self.recovered,
            "recovered_all": self.recovered_all,
            "recovered_per_instance": self.recovered_per_instance,
        }
        for name in self.checks:
            out[f"check_{name}_per_instance"] = [name not in failed for failed in self.failed]
        return out


def _failure(family: Any, name: str) -> str:
    check = family.check(name)
    return check.failure if check is not None else name


MAX_INSTANCES = 100_000
"""A stored instance count above this is not believed (the longest per-instance list counts instead)."""


def n_instances(metrics: Mapping[str, Any]) -> int:
    """`n_instances` when stored (an instance without metrics then fails), else the longest per-instance list."""
    from apd.targets.family import finite_number

    n = finite_number(metrics.get("n_instances"))
    if n is not None and n.is_integer() and 0 <= n <= MAX_INSTANCES:
        return int(n)
    lengths = [len(v) for k, v in metrics.items() if k.endswith("_per_instance") and _is_list(v)]
    return max(lengths, default=0)


def _is_list(v: Any) -> bool:
    return isinstance(v, list | tuple | np.ndarray)


def _value(metrics: Mapping[str, Any], key: str, i: int) -> float | None:
    from apd.targets.family import finite_number

    value: Any = metrics.get(key)
    if key.endswith("_per_instance"):
        if not _is_list(value) or i >= len(value):
            return None
        value = value[i]
    return finite_number(value)


def decide(
    metrics: Mapping[str, Any],
    eval_cfg: EvalConfig | Mapping[str, Any],
    *,
    family: str | None = None,
    measured_only: bool = False,
) -> Verdict:
    """Judge every instance with the family's checks (`family`: default the metrics' own, see `family_kind`).

    A check fails when any metric it reads is missing, None, NaN or not a number. `measured_only`
    skips checks none of whose metrics the dict holds at all (results written before the check
    existed); use it only for such old results.
    """
    from apd.targets.registry import get_family

    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(dict(eval_cfg), source="eval")
    kind = family or family_kind(metrics)
    checks = get_family(kind).active_checks(metrics, cfg)
    if measured_only:
        checks = [c for c in checks if any(k in metrics for k in c.reads)]
    failed: list[tuple[str, ...]] = []
    missing: list[tuple[str, ...]] = []
    for i in range(n_instances(metrics)):
        bad, absent = [], []
        for check in checks:
            values = [_value(metrics, k, i) for k in check.reads]
            if any(v is None for v in values):
                bad.append(check.name)
                absent.append(check.name)
            elif not check.passes(values, cfg):
                bad.append(check.name)
        failed.append(tuple(bad))
        missing.append(tuple(absent))
    return Verdict(kind, tuple(c.name for c in checks), tuple(failed), tuple(missing))


def judge(metrics: Mapping[str, Any], eval_cfg: EvalConfig | Mapping[str, Any]) -> dict[str, Any]:
    """`decide(...).to_metrics()`: `recovered` (share of instances), `recovered_all`,
    `recovered_per_instance` and `check_<name>_per_instance`."""
    return decide(metrics, eval_cfg).to_metrics()


def rules(kind: str, ev: EvalConfig, names: Sequence[str] | None = None) -> list[str]:
    """The family's rules in words with `ev`'s thresholds: those in `names` (default: all that apply)."""
    from apd.targets.registry import get_family

    family = get_family(kind)
    checks = family.checks if names is not None else family.active_checks({}, ev)
    return [c.rule(ev) for c in checks if names is None or c.name in names]
