"""The papers' TMS numbers (docs/method.md) beside a sweep's best trials and settings, per method and target."""

from __future__ import annotations

import pandas as pd

from apd.analysis._answer import best_trial
from apd.analysis._outcomes import add_outcomes
from apd.analysis._settings import DEFAULT_MIN_SEEDS, DEFAULT_SHARE, settings_table, with_setting_ids

PAPER_TMS = pd.DataFrame(
    [
        ("tms-5-2", "APD paper", 0.998, 0.000, 0.893, 0.004),
        ("tms-40-10", "APD paper", 0.996, 0.003, 0.935, 0.001),
        ("tms-5-2", "SPD paper", 1.000, None, 0.993, 0.002),
        ("tms-40-10", "SPD paper", 1.000, None, 1.010, 0.007),
        ("tms-5-2-id", "SPD paper", 1.000, None, 0.992, 0.010),
        ("tms-40-10-id", "SPD paper", 1.000, None, 1.031, 0.001),
    ],
    columns=["target", "source", "mmcs", "mmcs_std", "ml2r", "ml2r_std"],
)
"""MMCS and ML2R as published, by registered target; `*_std` is the std across features of one instance."""
COLUMNS = ["target", "method", "source", "mmcs", "ml2r", "n"]


def compare_with_paper(
    trials: pd.DataFrame, *, share: float = DEFAULT_SHARE, min_seeds: int = DEFAULT_MIN_SEEDS
) -> pd.DataFrame:
    """Rows of the papers' table next to each (method, target)'s best trial and best recovering setting.

    Only TMS targets the papers report (by the `target` and `family` columns). Sweep rows give MMCS/ML2R
    as stored (means over model instances); the best setting row gives the median over its completed
    seeds and their range, with its counts.
    """
    df = add_outcomes(with_setting_ids(trials)) if "instance_success" not in trials.columns else trials
    rows: list[dict[str, object]] = []
    tms = df[(df["family"] == "tms") & df["target"].isin(PAPER_TMS["target"])] if "family" in df.columns else df[:0]
    for (method, target), g in tms.groupby(["method", "target"], sort=True):
        if "metric.mmcs" not in g.columns:
            continue
        for _, p in PAPER_TMS[PAPER_TMS["target"] == target].iterrows():
            rows.append(
                {
                    "target": target,
                    "method": method,
                    "source": p["source"],
                    "mmcs": _pm(p["mmcs"], p["mmcs_std"]),
                    "ml2r": _pm(p["ml2r"], p["ml2r_std"]),
                    "n": "1 instance (± over features)",
                }
            )
        settings = settings_table(g, share=share, min_seeds=min_seeds)
        best = best_trial(g, settings)
        if best is not None:
            rec = f"{int(best['n_recovered_instances'])}/{int(best['n_judged_instances'])} instances recovered"
            rows.append(
                {
                    "target": target,
                    "method": method,
                    "source": f"best trial {best['trial_id']}",
                    "mmcs": f"{best['metric.mmcs']:.3f}",
                    "ml2r": f"{best['metric.ml2r']:.3f}",
                    "n": f"seed {best['seed']}, {rec}",
                }
            )
        good = settings[settings["recovers"]] if len(settings) else settings
        if len(good):
            sid = good.iloc[0]["setting_id"]
            done = g[(g["setting_id"] == sid) & (g["status"] == "COMPLETE")]
            rows.append(
                {
                    "target": target,
                    "method": method,
                    "source": f"best recovering setting {sid}",
                    "mmcs": _median_range(done["metric.mmcs"]),
                    "ml2r": _median_range(done["metric.ml2r"]),
                    "n": f"{len(done)} seeds, recovered {good.iloc[0]['recovery']} instances",
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _pm(value: float, std: float | None) -> str:
    return f"{value:.3f}" if std is None or pd.isna(std) else f"{value:.3f} ± {std:.3f}"


def _median_range(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    return f"{v.median():.3f} [{v.min():.3f}, {v.max():.3f}]" if len(v) else "–"
