"""The papers' TMS numbers (method notes 4.1) beside a sweep's best trials and settings."""

from __future__ import annotations

import re

import pandas as pd

from apd.analysis._answer import best_trial
from apd.analysis._outcomes import add_outcomes
from apd.analysis._settings import settings_table, with_setting_ids

PAPER_TMS = pd.DataFrame(
    [
        ("5-2", "APD paper", 0.998, 0.000, 0.893, 0.004),
        ("40-10", "APD paper", 0.996, 0.003, 0.935, 0.001),
        ("5-2", "SPD paper", 1.000, None, 0.993, 0.002),
        ("40-10", "SPD paper", 1.000, None, 1.010, 0.007),
        ("5-2-id", "SPD paper", 1.000, None, 0.992, 0.010),
        ("40-10-id", "SPD paper", 1.000, None, 1.031, 0.001),
    ],
    columns=["model", "source", "mmcs", "mmcs_std", "ml2r", "ml2r_std"],
)
"""MMCS and ML2R as published; `*_std` is the std across features of one instance (the papers' ±)."""


def tms_model(experiment: str) -> str | None:
    """`tms-40-10-id` -> `40-10-id`, `tms-5-2-code` -> `5-2`; None for non-TMS experiments."""
    stem = experiment.rsplit("/", 1)[-1].removesuffix(".yaml")
    m = re.fullmatch(r"tms-(\d+)-(\d+)(-id)?(-.*)?", stem)
    return None if m is None else f"{m[1]}-{m[2]}{m[3] or ''}"


def compare_with_paper(trials: pd.DataFrame, *, share: float = 1.0, min_seeds: int = 3) -> pd.DataFrame:
    """Rows of the papers' table next to each TMS experiment's best trial and best recovering setting.

    Sweep rows give MMCS/ML2R as stored (means over model instances); the best setting row gives the
    median over its completed seeds and their range, with the count of seeds.
    """
    df = add_outcomes(with_setting_ids(trials)) if "outcome" not in trials.columns else trials
    rows: list[dict[str, object]] = []
    for experiment, g in df.groupby("experiment", sort=True):
        model = tms_model(str(experiment))
        if model is None or "metric.mmcs" not in g.columns:
            continue
        for _, p in PAPER_TMS[PAPER_TMS["model"] == model].iterrows():
            rows.append(
                {
                    "experiment": experiment,
                    "model": model,
                    "source": p["source"],
                    "mmcs": _pm(p["mmcs"], p["mmcs_std"]),
                    "ml2r": _pm(p["ml2r"], p["ml2r_std"]),
                    "n": "1 instance (± over features)",
                }
            )
        settings = settings_table(g, share=share, min_seeds=min_seeds)
        best = best_trial(g, settings)
        if best is not None:
            rows.append(
                {
                    "experiment": experiment,
                    "model": model,
                    "source": f"best trial {best['trial_id']}",
                    "mmcs": f"{best['metric.mmcs']:.3f}",
                    "ml2r": f"{best['metric.ml2r']:.3f}",
                    "n": f"seed {best['seed']}, {best['outcome']}",
                }
            )
        good = settings[settings["recovers"]] if len(settings) else settings
        if len(good):
            sid = good.iloc[0]["setting_id"]
            done = g[(g["setting_id"] == sid) & (g["status"] == "COMPLETE")]
            rows.append(
                {
                    "experiment": experiment,
                    "model": model,
                    "source": f"best recovering setting {sid}",
                    "mmcs": _median_range(done["metric.mmcs"]),
                    "ml2r": _median_range(done["metric.ml2r"]),
                    "n": f"{len(done)} seeds, recovered {good.iloc[0]['recovery']}",
                }
            )
    return pd.DataFrame(rows, columns=["experiment", "model", "source", "mmcs", "ml2r", "n"])


def _pm(value: float, std: float | None) -> str:
    return f"{value:.3f}" if std is None or pd.isna(std) else f"{value:.3f} ± {std:.3f}"


def _median_range(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    return f"{v.median():.3f} [{v.min():.3f}, {v.max():.3f}]" if len(v) else "–"
