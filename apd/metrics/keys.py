"""The metrics.json keys every evaluation writes; each target family declares its own on top.

`metric_keys(kind)` lists everything `apd.metrics.evaluate` may return for a family,
`objective_keys()` the scalar ones of every registered family (what a sweep can optimise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COMMON_KEYS = (
    "family",
    "n_features",
    "n_instances",
    "identity_error",
    "identity_off_diag",
    "identity_diag_miss",
    "identity_error_per_instance",
    "recovered",
    "recovered_all",
    "recovered_per_instance",
)
"""Written for every target: the judging family, sizes, the identity pattern (docs/method.md), the verdict."""


def check_keys(kind: str) -> tuple[str, ...]:
    """`check_<name>_per_instance`: the per-instance outcome of each of the family's checks."""
    from apd.targets.registry import get_family

    return tuple(c.stored_key for c in get_family(kind).checks)


def metric_keys(kind: str) -> tuple[str, ...]:
    """Every key `evaluate` may return for a target of family `kind` (optional ones included)."""
    from apd.targets.registry import get_family

    return COMMON_KEYS + get_family(kind).metric_keys + check_keys(kind)


def objective_keys() -> tuple[str, ...]:
    """The scalar metrics.json keys of every registered family (a sweep objective must be one of them)."""
    from apd.targets.registry import FAMILIES

    keys = (*COMMON_KEYS, *(k for f in FAMILIES.values() for k in f.metric_keys))
    return tuple(k for k in dict.fromkeys(keys) if not k.endswith("_per_instance") and k != "family")


def legacy_family(metrics: Mapping[str, Any]) -> str:
    """The family of metrics written before they named it (schema 1): the first whose `marker_keys` they
    hold, else the user-file family (judged by its identity pattern, as every other target was then)."""
    from apd.targets.registry import FAMILIES

    for kind, family in FAMILIES.items():
        if any(k in metrics for k in family.marker_keys):
            return kind
    return "file"


def family_kind(metrics: Mapping[str, Any]) -> str:
    """The family that judged (or judges) a metrics dict."""
    kind = metrics.get("family")
    return kind if isinstance(kind, str) and kind else legacy_family(metrics)
