"""Re-judge stored trials with other verdict thresholds, through the one rule (`apd.metrics.verdict.decide`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from apd.analysis._columns import METRIC
from apd.analysis._outcomes import row_metrics
from apd.config import EvalConfig
from apd.errors import ConfigError
from apd.metrics.verdict import decide

DERIVED = (
    "judged",
    "success",
    "outcome",
    "failure_modes",
    "instance_success",
    "instance_modes",
    "n_judged_instances",
    "n_recovered_instances",
)
"""Columns `add_outcomes` derives from the verdict: dropped when the verdict changes."""


def eval_config(overrides: EvalConfig | Mapping[str, Any] | None) -> EvalConfig:
    """An EvalConfig from a mapping of its fields (the rest default); a bad key names itself."""
    if overrides is None:
        return EvalConfig()
    if isinstance(overrides, EvalConfig):
        return overrides
    return EvalConfig.from_dict(dict(overrides), source="eval")


def rejudge(trials: pd.DataFrame, eval_cfg: EvalConfig | Mapping[str, Any] | None) -> pd.DataFrame:
    """A copy of `trials` whose verdict columns (`recovered`, `recovered_all`, `metric.recovered_per_instance`,
    `metric.check_<name>_per_instance`) follow `eval_cfg` instead of the stored verdict.

    Only COMPLETE trials are judged again; the others keep 0.0 / False. A missing or non-numeric
    metric fails its check. Results of schema 1 are judged on the checks they measured. Thresholds
    that shape a measurement (contribution cutoff, identity tolerance, scrub sample sizes) cannot
    change here.
    """
    cfg = eval_config(eval_cfg)
    df = trials.drop(columns=[c for c in DERIVED if c in trials.columns])
    new: dict[str, list[Any]] = {"recovered": [], "recovered_all": []}
    verdicts: list[dict[str, Any] | None] = []
    for _, row in df.iterrows():
        if row["status"] != "COMPLETE":
            new["recovered"].append(0.0)
            new["recovered_all"].append(False)
            verdicts.append(None)
            continue
        family = row.get("family") if isinstance(row.get("family"), str) else None
        try:
            v = decide(row_metrics(row), cfg, family=family, measured_only=row.get("schema") == "1")
        except ConfigError as e:  # a family this checkout does not know
            raise ConfigError(f"{row.get('out', '?')}: trial {row['trial_id']}: {e}") from None
        new["recovered"].append(v.recovered)
        new["recovered_all"].append(v.recovered_all)
        verdicts.append(v.to_metrics())
    df["recovered"] = pd.Series(new["recovered"], index=df.index, dtype=float)
    df["recovered_all"] = pd.Series(new["recovered_all"], index=df.index, dtype=bool)
    stored = [c for c in df.columns if str(c).startswith(f"{METRIC}check_")]
    keys = {k for v in verdicts if v for k in v if k.endswith("_per_instance")}
    for key in sorted(keys | {c[len(METRIC) :] for c in stored}):
        values = [None if v is None else v.get(key) for v in verdicts]
        df[METRIC + key] = pd.Series(values, index=df.index, dtype=object)
    return df
