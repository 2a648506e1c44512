"""Re-judge stored trials with other verdict thresholds, through the one rule in `apd.metrics.verdict`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from apd.analysis._columns import METRIC, as_list, is_missing
from apd.config import EvalConfig
from apd.errors import ConfigError
from apd.metrics.verdict import judge


def eval_config(overrides: EvalConfig | Mapping[str, Any] | None) -> EvalConfig:
    """An EvalConfig from a mapping of its fields (the rest default); a bad key names itself."""
    if overrides is None:
        return EvalConfig()
    if isinstance(overrides, EvalConfig):
        return overrides
    return EvalConfig.from_dict(dict(overrides), source="eval")


def row_metrics(row: pd.Series) -> dict[str, Any]:
    """The metrics.json dict of one trial, rebuilt from its `metric.*` columns (lists as lists)."""
    out: dict[str, Any] = {}
    for col, value in row.items():
        if not isinstance(col, str) or not col.startswith(METRIC):
            continue
        key = col[len(METRIC) :]
        if key.endswith("_per_instance"):
            if (values := as_list(value)) is not None:
                out[key] = values
        elif not is_missing(value):
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def rejudge(trials: pd.DataFrame, eval_cfg: EvalConfig | Mapping[str, Any] | None) -> pd.DataFrame:
    """A copy of `trials` whose `recovered` and `recovered_all` follow `eval_cfg` instead of the stored verdict.

    Only COMPLETE trials are judged again; the others keep 0.0 / False. Thresholds that shape a
    measurement (contribution cutoff, identity tolerance, scrub sample sizes) cannot change here.
    """
    cfg = eval_config(eval_cfg)
    df = trials.copy()
    rec, rec_all = [], []
    for _, row in df.iterrows():
        if row["status"] != "COMPLETE":
            rec.append(0.0)
            rec_all.append(False)
            continue
        try:
            verdict = judge(row_metrics(row), cfg)
        except (KeyError, TypeError, IndexError) as e:
            raise ConfigError(
                f"trial {row['trial_id']}: cannot re-judge, stored metrics lack {METRIC}{e.args[0] if e.args else '?'}"
            ) from None
        rec.append(float(verdict["recovered"]))
        rec_all.append(bool(verdict["recovered_all"]))
    df["recovered"] = pd.Series(rec, index=df.index, dtype=float)
    df["recovered_all"] = pd.Series(rec_all, index=df.index, dtype=bool)
    for col in ("judged", "success", "outcome", "failure_mode"):
        df = df.drop(columns=col) if col in df.columns else df
    return df
