"""Group trials into settings (same parameters, different seeds) and count recoveries per setting."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from apd.analysis._columns import is_missing, param_columns, short, yaml_value
from apd.analysis._outcomes import add_outcomes
from apd.errors import ConfigError

SETTING_KEYS = ("experiment", "setting_id")


def format_rate(k: int, n: int) -> str:
    """`4/5`: a success count always travels with its denominator."""
    return f"{k}/{n}"


def needed(n: int, share: float) -> int:
    """Seeds that must recover out of `n` for a setting to count as recovering at `share`."""
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


def settings_table(trials: pd.DataFrame, *, share: float = 1.0, min_seeds: int = 3) -> pd.DataFrame:
    """One row per setting with its parameters and seed counts.

    Columns: experiment, setting_id, the `param.*` values, `n_trials`, `n_judged` (COMPLETE, DIVERGED
    or PRUNED seeds), `n_recovered`, `n_diverged`, `n_pruned`, `n_failed` (errors), `n_running`,
    `rate` (n_recovered / n_judged), `recovery` ("k/n"), `seeds` (of the judged trials) and `recovers` (at least
    `min_seeds` judged seeds and at least `share` of them recovered). Sorted best first.
    """
    check_rule(share, min_seeds)
    df = with_setting_ids(trials)
    if "outcome" not in df.columns:
        df = add_outcomes(df)
    cols = param_columns(df)
    rows = []
    for (experiment, setting_id), g in df.groupby(list(SETTING_KEYS), sort=False):
        first = g.iloc[0]
        n_judged = int(g["judged"].sum())
        n_rec = int(g["success"].sum())
        counts = g["outcome"].astype(str).value_counts()
        rows.append(
            {
                "experiment": experiment,
                "setting_id": setting_id,
                **{c: first[c] for c in cols},
                "n_trials": len(g),
                "n_judged": n_judged,
                "n_recovered": n_rec,
                "n_diverged": int(counts.get("diverged", 0)),
                "n_pruned": int(counts.get("pruned", 0)),
                "n_failed": int(counts.get("failed", 0)),
                "n_running": int(counts.get("running", 0)),
                "rate": n_rec / n_judged if n_judged else float("nan"),
                "recovery": format_rate(n_rec, n_judged),
                "seeds": sorted(int(s) for s in g.loc[g["judged"], "seed"].dropna()),
                "recovers": n_judged >= min_seeds and n_rec >= needed(n_judged, share),
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
    """Recovered / judged trial counts per group of `by` columns (for maps and per-parameter curves)."""
    df = trials if "judged" in trials.columns else add_outcomes(trials)
    judged = df[df["judged"]]
    g = judged.groupby(by, observed=True, dropna=False)
    out = g.agg(n_recovered=("success", "sum"), n_judged=("success", "size")).reset_index()
    out["n_recovered"] = out["n_recovered"].astype(int)
    out["rate"] = out["n_recovered"] / out["n_judged"]
    out["recovery"] = [format_rate(k, n) for k, n in zip(out["n_recovered"], out["n_judged"], strict=True)]
    return out
