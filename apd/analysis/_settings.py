"""Group trials into settings (same parameters, different seeds) and count recoveries per setting.

The evidence is per model instance: each (trial, instance) is one judged replicate, so a setting's
recovery rate is the share of its judged instances that recovered. A setting *recovers* when it has
at least `min_seeds` judged seeds and at least `share` (default 0.9) of its judged instances recovered.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from apd.analysis._columns import is_missing, param_columns, short, yaml_value
from apd.analysis._outcomes import add_outcomes, instances
from apd.errors import ConfigError

SETTING_KEYS = ("experiment", "setting_id")
DEFAULT_SHARE = 0.9
"""Share of a setting's judged instances that must recover (`apd analyze --share`)."""
DEFAULT_MIN_SEEDS = 3


def format_rate(k: int, n: int) -> str:
    """`4/5`: a success count always travels with its denominator."""
    return f"{k}/{n}"


def needed(n: int, share: float) -> int:
    """Instances that must recover out of `n` for a setting to count as recovering at `share`."""
    return math.ceil(share * n - 1e-9)


def check_rule(share: float, min_seeds: int) -> None:
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"share: must be in (0, 1] (got {share})")
    if min_seeds < 1:
        raise ConfigError(f"min_seeds: must be >= 1 (got {min_seeds})")


def _hash_params(row: pd.Series, cols: list[str]) -> str:
    items = {short(c): yaml_value(row[c]) for c in cols if not is_missing(row[c])}
    return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:12]


def with_setting_ids(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy where every row has `experiment`, `setting_id` and `seed` (filled from the params if absent)."""
    df = trials.copy()
    if "experiment" not in df.columns:
        df["experiment"] = "?"
    df["experiment"] = df["experiment"].fillna("?").astype(str)
    cols = param_columns(df)
    if "setting_id" not in df.columns:
        df["setting_id"] = None
    df["setting_id"] = df["setting_id"].astype(object)
    col = df.columns.get_loc("setting_id")
    for pos in np.flatnonzero(df["setting_id"].isna().to_numpy()):
        df.iat[pos, col] = _hash_params(df.iloc[pos], cols)
    if "seed" not in df.columns:
        df["seed"] = df["param.seed"] if "param.seed" in df.columns else pd.NA
    return df


def settings_table(
    trials: pd.DataFrame, *, share: float = DEFAULT_SHARE, min_seeds: int = DEFAULT_MIN_SEEDS
) -> pd.DataFrame:
    """One row per setting with its parameters, seed counts and instance counts.

    Columns: experiment, setting_id, method, target, the `param.*` values, `n_trials`, `n_judged`
    (COMPLETE, DIVERGED or PRUNED seeds), `n_recovered` (seeds with every instance recovered),
    `n_diverged`, `n_pruned`, `n_failed` (errors), `n_running`, `n_instances` (judged instances),
    `n_inst_recovered`, `rate` (n_inst_recovered / n_instances), `recovery` ("k/n" instances),
    `trials_recovery` ("k/n" seeds), `seeds` (of the judged trials) and `recovers` (at least
    `min_seeds` judged seeds and at least `share` of the judged instances recovered). Best first.
    """
    check_rule(share, min_seeds)
    df = with_setting_ids(trials)
    if "instance_success" not in df.columns:
        df = add_outcomes(df)
    cols = param_columns(df)
    rows = []
    for (experiment, setting_id), g in df.groupby(list(SETTING_KEYS), sort=False):
        first = g.iloc[0]
        n_judged = int(g["judged"].sum())
        n_rec = int(g["success"].sum())
        n_inst, k_inst = int(g["n_judged_instances"].sum()), int(g["n_recovered_instances"].sum())
        counts = g["status"].value_counts()
        rows.append(
            {
                "experiment": experiment,
                "setting_id": setting_id,
                "method": first.get("method"),
                "target": first.get("target"),
                **{c: first[c] for c in cols},
                "n_trials": len(g),
                "n_judged": n_judged,
                "n_recovered": n_rec,
                "n_diverged": int(counts.get("DIVERGED", 0)),
                "n_pruned": int(counts.get("PRUNED", 0)),
                "n_failed": int(counts.get("FAILED", 0)),
                "n_running": int(counts.get("RUNNING", 0)),
                "n_instances": n_inst,
                "n_inst_recovered": k_inst,
                "rate": k_inst / n_inst if n_inst else float("nan"),
                "recovery": format_rate(k_inst, n_inst),
                "trials_recovery": format_rate(n_rec, n_judged),
                "seeds": sorted(int(s) for s in g.loc[g["judged"], "seed"].dropna()),
                "recovers": n_judged >= min_seeds and n_inst > 0 and k_inst >= needed(n_inst, share),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["recovers", "rate", "n_judged"], ascending=False, na_position="last").reset_index(drop=True)


def recovering_settings(table: pd.DataFrame) -> pd.DataFrame:
    """The settings of a `settings_table` that recover under its rule."""
    return table[table["recovers"]].reset_index(drop=True) if len(table) else table


def rate_by(trials: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Recovered / judged instance counts per group of `by` columns (for maps and per-parameter curves).

    `trials` is a trial frame or an `instances` frame; columns n_recovered, n_judged (instances),
    n_trials, rate and recovery ("k/n").
    """
    inst = trials if "instance" in trials.columns else instances(trials)
    g = inst.groupby(by, observed=True, dropna=False)
    out = g.agg(n_recovered=("success", "sum"), n_judged=("success", "size")).reset_index()
    ids = [c for c in ("out", "trial_id") if c in inst.columns]
    trial_counts = g[ids].apply(lambda d: len(d.drop_duplicates()))
    out["n_trials"] = trial_counts.to_numpy() if len(out) else []
    out["n_recovered"] = out["n_recovered"].astype(int)
    out["rate"] = out["n_recovered"] / out["n_judged"]
    out["recovery"] = [format_rate(k, n) for k, n in zip(out["n_recovered"], out["n_judged"], strict=True)]
    return out
