"""Per-trial outcome (recovered, not recovered, diverged, ...) and, for failures, the failure mode."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from apd.analysis._columns import as_list, is_missing
from apd.config import EvalConfig

JUDGED = ("COMPLETE", "DIVERGED", "PRUNED")
"""Statuses that count as a seed of a setting. FAILED (an exception) and RUNNING trials say nothing
about the method, so they are counted apart and never enter a success rate."""

RECOVERED = "recovered"
OUTCOMES = (RECOVERED, "not recovered", "diverged", "pruned", "failed", "running")
_STATUS_OUTCOME = {"DIVERGED": "diverged", "PRUNED": "pruned", "FAILED": "failed", "RUNNING": "running"}


def trial_recovered(row: pd.Series) -> bool:
    """The stored verdict of one trial: all instances recovered, and the run completed."""
    if row["status"] != "COMPLETE":
        return False
    value = row.get("recovered_all")
    if is_missing(value):
        rec = row.get("recovered")
        return not is_missing(rec) and float(rec) >= 1.0
    return bool(value)


def _any(values: list[float] | None, bad: Callable[[float], bool]) -> bool:
    return values is not None and any(bad(v) for v in values)


def _per_instance(row: pd.Series, key: str) -> list[float] | None:
    values = as_list(row.get(f"metric.{key}_per_instance"))
    return values if values is not None else as_list(row.get(f"metric.{key}"))


def tms_failure(row: pd.Series, ev: EvalConfig) -> str:
    """The first TMS criterion (method notes 9) that some instance fails."""
    if _any(_per_instance(row, "mmcs"), lambda v: v < ev.mmcs_min):
        return "low MMCS"
    ml2r = _per_instance(row, "ml2r")
    if _any(ml2r, lambda v: v < ev.ml2r_min):
        return "low ML2R"
    high = ev.ml2r_max
    if high is not None and _any(ml2r, lambda v: v > high):
        return "high ML2R"
    n_f = row.get("metric.n_features")
    if ev.require_one_to_one and not is_missing(n_f) and _any(_per_instance(row, "n_distinct"), lambda v: v < n_f):
        return "non-distinct matching"
    if _any(_per_instance(row, "hidden_identity_rel_error"), lambda v: v > ev.identity_hidden_rel_tol):
        return "hidden identity not covered"
    return "not recovered"


def resid_failure(row: pd.Series, ev: EvalConfig) -> str:
    """The first residual-MLP criterion (method notes 9) that some instance fails."""
    if _any(_per_instance(row, "dedicated_fraction"), lambda v: v < ev.dedicated_min):
        return "shared components (low dedicated fraction)"
    if _any(_per_instance(row, "n_dedicated_not_mono"), lambda v: v > 0):
        return "polysemantic dedicated components"
    if _any(_per_instance(row, "median_norm_top1_mse"), lambda v: v > ev.norm_top1_mse_max):
        return "poor top-1 reconstruction"
    if _any(_per_instance(row, "scrub_ratio"), lambda v: v < ev.scrub_ratio_min):
        return "weak scrub separation"
    return "not recovered"


def _failure(row: pd.Series, ev: EvalConfig) -> str:
    if not is_missing(row.get("metric.mmcs")):
        return tms_failure(row, ev)
    if not is_missing(row.get("metric.dedicated_fraction")):
        return resid_failure(row, ev)
    if _any(_per_instance(row, "identity_error"), lambda v: v > 0):
        return "identity-pattern errors"
    return "not recovered"


def add_outcomes(trials: pd.DataFrame, eval_cfg: EvalConfig | None = None) -> pd.DataFrame:
    """A copy of `trials` with `judged`, `success`, `outcome` and `failure_mode` columns."""
    ev = eval_cfg or EvalConfig()
    df = trials.copy()
    df["judged"] = df["status"].isin(JUDGED)
    df["success"] = [trial_recovered(row) for _, row in df.iterrows()] if len(df) else []
    df["success"] = df["success"].astype(bool)
    outcome = df["status"].map(_STATUS_OUTCOME).fillna("not recovered")
    outcome[df["success"]] = RECOVERED
    df["outcome"] = pd.Categorical(outcome, categories=OUTCOMES)
    modes: list[str | None] = []
    for _, row in df.iterrows():
        if row["outcome"] == "not recovered":
            modes.append(_failure(row, ev))
        elif row["outcome"] == RECOVERED:
            modes.append(None)
        else:
            modes.append(str(row["outcome"]))
    df["failure_mode"] = modes
    return df
