"""Plain-words answers: the parameter band that recovers, how the rest fails, the best trial and its rerun command."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

import pandas as pd

from apd.analysis._columns import fmt_value, is_missing, param_columns, short, target_kind, yaml_value
from apd.analysis._settings import format_rate


def band(settings: pd.DataFrame, param: str) -> str | None:
    """How the recovering settings restrict `param` relative to all judged settings, e.g. `topk in [0.2, 0.26]`.

    None when the recovering settings span the whole swept range (the parameter does not matter there).
    """
    judged = settings[settings["n_judged"] > 0]
    good = judged[judged["recovers"]][param].dropna()
    every = judged[param].dropna()
    if good.empty or every.astype(str).nunique() < 2:
        return None
    name = short(param)
    numeric = pd.api.types.is_numeric_dtype(every) and not pd.api.types.is_bool_dtype(every)
    if not numeric:
        chosen = sorted({str(v) for v in good})
        if len(chosen) == every.astype(str).nunique():
            return None
        return f"{name} = {chosen[0]}" if len(chosen) == 1 else f"{name} in {{{', '.join(chosen)}}}"
    lo, hi = float(good.min()), float(good.max())
    all_lo, all_hi = float(every.min()), float(every.max())
    if lo == hi:
        return f"{name} = {fmt_value(lo)}"
    if lo > all_lo and hi < all_hi:
        return f"{name} in [{fmt_value(lo)}, {fmt_value(hi)}]"
    if lo > all_lo:
        return f"{name} >= {fmt_value(lo)}"
    if hi < all_hi:
        return f"{name} <= {fmt_value(hi)}"
    return None


def failure_counts(trials: pd.DataFrame) -> pd.Series:
    """Failure modes of the judged, unrecovered trials, most common first."""
    failed = trials[trials["judged"] & ~trials["success"]]
    return failed["failure_mode"].value_counts()


def _modes_text(counts: pd.Series, n: int, top: int = 3) -> str:
    parts = [f"{mode} ({format_rate(int(k), n)})" for mode, k in counts.head(top).items()]
    return ", ".join(parts)


def seeds_phrase(settings: pd.DataFrame, share: float, min_seeds: int) -> str:
    """`on all 3 seeds` when every judged setting has the same seed count, else the rule itself."""
    n = settings.loc[settings["n_judged"] > 0, "n_judged"].unique()
    if share >= 1.0:
        if len(n) == 1 and int(n[0]) >= min_seeds:
            return f"on all {int(n[0])} seeds"
        return f"on all of at least {min_seeds} seeds"
    return f"on at least {share:.0%} of at least {min_seeds} seeds"


def answer(
    experiment: str,
    trials: pd.DataFrame,
    settings: pd.DataFrame,
    ranked: Sequence[str],
    *,
    share: float,
    min_seeds: int,
) -> str:
    """One paragraph that answers: which settings recover, needing what, and how the others fail."""
    judged_settings = settings[settings["n_judged"] > 0]
    n_set = len(judged_settings)
    judged = trials[trials["judged"]]
    n_trials, n_rec = len(judged), int(judged["success"].sum())
    if n_set == 0:
        return f"No trial of {experiment} finished (statuses: {_status_text(trials)}), so nothing can be judged yet."
    good = judged_settings[judged_settings["recovers"]]
    enough = judged_settings[judged_settings["n_judged"] >= min_seeds]
    seeds = seeds_phrase(judged_settings, share, min_seeds)
    unit = "setting" if n_set == 1 else "settings"
    if not good.empty:
        bands = [b for p in ranked[:3] if (b := band(judged_settings, p)) is not None]
        need = f"; recovery needs {' and '.join(bands)}" if bands else ""
        outside = trials[trials["judged"] & ~trials["setting_id"].isin(good["setting_id"]) & ~trials["success"]]
        n_out = int((trials["judged"] & ~trials["setting_id"].isin(good["setting_id"])).sum())
        fails = (
            f"; outside {'that band' if bands else 'them'} trials fail by {_modes_text(failure_counts(outside), n_out)}"
            if n_out and len(outside)
            else ""
        )
        return f"{len(good)} of {n_set} {unit} recovered {experiment} {seeds}{need}{fails}."
    counts = failure_counts(trials)
    if n_rec == 0:
        return (
            f"No trial of {experiment} recovered the ground truth (0/{n_trials} judged trials in {n_set} {unit}); "
            f"they fail by {_modes_text(counts, n_trials)}."
        )
    best = judged_settings.sort_values(["rate", "n_judged"], ascending=False).iloc[0]
    params = ", ".join(f"{short(c)}={fmt_value(best[c])}" for c in param_columns(settings) if not is_missing(best[c]))
    few = (
        f" Only {len(enough)} of {n_set} {unit} have the {min_seeds} seeds the rule needs."
        if len(enough) < n_set
        else ""
    )
    return (
        f"No setting of {experiment} recovered {seeds} (0 of {n_set} {unit}), "
        f"but {n_rec}/{n_trials} judged trials did; "
        f"the best setting recovered {best['recovery']} ({params or 'no swept parameters'}). "
        f"The failing trials fail by {_modes_text(counts, n_trials - n_rec)}.{few}"
    )


def _status_text(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts()
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def best_trial(
    trials: pd.DataFrame,
    settings: pd.DataFrame,
    objectives: Sequence[str] = (),
    directions: Sequence[str] = (),
) -> pd.Series | None:
    """The single best trial: in a recovering setting, recovered, best first objective, then best metrics."""
    done = trials[trials["status"] == "COMPLETE"].copy()
    if done.empty:
        return None
    good_ids = set(settings.loc[settings["recovers"], "setting_id"]) if len(settings) else set()
    keys: list[str] = []
    ascending: list[bool] = []
    done["_in_good"] = done["setting_id"].isin(good_ids)
    keys += ["_in_good", "success"]
    ascending += [False, False]
    if "recovered" in done.columns:
        done["_rec"] = done["recovered"].astype(float).fillna(0.0)
        keys.append("_rec")
        ascending.append(False)
    if objectives and objectives[0] in done.columns:
        keys.append(objectives[0])
        ascending.append(not directions or directions[0] == "minimize")
    kind = target_kind(done)
    extra = {"tms": ["metric.mmcs", "metric.ml2r"], "resid_mlp": ["metric.dedicated_fraction"]}.get(kind, [])
    for col in extra:
        if col in done.columns:
            keys.append(col)
            ascending.append(False)
    if "metric.identity_error" in done.columns:
        keys.append("metric.identity_error")
        ascending.append(True)
    ordered = done.sort_values(keys, ascending=ascending, na_position="last", kind="stable")
    return ordered.iloc[0].drop(labels=["_in_good", "_rec"], errors="ignore")


def rerun_command(trial: pd.Series, fixed: dict[str, Any] | None = None, *, seed_target: bool = False) -> str:
    """`apd decompose EXPERIMENT --set k=v ... --set seed=N`: the exact command that reruns `trial`.

    `fixed` holds the sweep's non-swept overrides (they come first; swept values win on a clash);
    with `seed_target` the replica seed also picks the target (`target.seed`).
    """
    sets: dict[str, str] = {k: yaml_value(v) for k, v in (fixed or {}).items()}
    for col in param_columns(trial):
        if not is_missing(trial[col]):
            sets[short(col)] = yaml_value(trial[col])
    seed = trial.get("seed")
    if is_missing(seed) and "param.seed" in trial.index:
        seed = trial["param.seed"]
    if not is_missing(seed):
        sets["seed"] = yaml_value(int(seed))
        if seed_target:
            sets["target.seed"] = yaml_value(int(seed))
    parts = ["apd", "decompose", str(trial.get("experiment", "EXPERIMENT"))]
    for k, v in sets.items():
        parts += ["--set", f"{k}={v}"]
    return shlex.join(parts)


def pretty_experiment(name: str) -> str:
    """`tms-5-2` -> `TMS 5-2 (tms-5-2)`, `resid-mlp-2` -> `residual MLP, 2 layers (resid-mlp-2)`."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    if m := re.fullmatch(r"tms-(\d+)-(\d+)(-.*)?", stem):
        extra = {"-id": ", hidden identity", "-lp": ", Lp sparsity", "-code": ", code config"}.get(m[3] or "", "")
        return f"TMS {m[1]}-{m[2]}{extra} ({stem})"
    if m := re.fullmatch(r"resid-mlp-(\d+)(-.*)?", stem):
        layers = "1 layer" if m[1] == "1" else f"{m[1]} layers"
        return f"residual MLP, {layers} ({stem})"
    return stem
