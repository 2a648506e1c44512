"""Plain-words answers: the parameter band that recovers, how the rest fails, the best trial and its rerun command.

Counts are per model instance ("41/60 instances over 5 seeds") beside the trial counts; failure
modes are multi-label (an instance failing three checks counts under all three).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

import pandas as pd

from apd.analysis._columns import fmt_value, is_missing, param_columns, short, yaml_value
from apd.analysis._outcomes import failure_counts, instances
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


def _modes_text(counts: pd.DataFrame, n: int, top: int = 3) -> str:
    parts = [f"{row['mode']} ({format_rate(int(row['instances']), n)})" for _, row in counts.head(top).iterrows()]
    return ", ".join(parts)


def evidence(trials: pd.DataFrame) -> str:
    """`41/60 instances over 5 seeds`: the judged instances that recovered, and how many seeds they come from."""
    judged = trials[trials["judged"]]
    k, n = int(judged["n_recovered_instances"].sum()), int(judged["n_judged_instances"].sum())
    seeds = len(judged)
    return f"{format_rate(k, n)} instances over {seeds} seed{'s' if seeds != 1 else ''}"


def rule_phrase(share: float, min_seeds: int) -> str:
    """The recovery rule of a setting, in short: `>= 90% of judged instances, >= 3 seeds`."""
    who = "every judged instance" if share >= 1.0 else f">= {share:.0%} of judged instances"
    return f"{who}, >= {min_seeds} seeds"


def answer(
    label: str,
    trials: pd.DataFrame,
    settings: pd.DataFrame,
    ranked: Sequence[str],
    *,
    share: float,
    min_seeds: int,
) -> str:
    """One paragraph that answers: which settings recover, needing what, and how the others fail."""
    judged_settings = settings[settings["n_judged"] > 0] if len(settings) else settings
    n_set = len(judged_settings)
    judged = trials[trials["judged"]]
    if n_set == 0:
        return f"No trial of {label} finished (statuses: {_status_text(trials)}), so nothing can be judged yet."
    n_inst, n_inst_rec = int(judged["n_judged_instances"].sum()), int(judged["n_recovered_instances"].sum())
    good = judged_settings[judged_settings["recovers"]]
    unit = "setting" if n_set == 1 else "settings"
    rule = rule_phrase(share, min_seeds)
    if not good.empty:
        bands = [b for p in ranked[:3] if (b := band(judged_settings, p)) is not None]
        need = f"; recovery needs {' and '.join(bands)}" if bands else ""
        inside = trials["setting_id"].isin(good["setting_id"])
        outside = trials[trials["judged"] & ~inside]
        n_out = int(outside["n_judged_instances"].sum()) - int(outside["n_recovered_instances"].sum())
        counts = failure_counts(outside)
        fails = (
            f"; outside {'that band' if bands else 'them'} {n_out} of {int(outside['n_judged_instances'].sum())} "
            f"instances fail, by {_modes_text(counts, n_out)}"
            if n_out and len(counts)
            else ""
        )
        return (
            f"{len(good)} of {n_set} {unit} recovered {label} ({rule}): "
            f"{evidence(trials[trials['judged'] & inside])}{need}{fails}.{why_phrase(trials, judged_settings, ranked)}"
        )
    counts = failure_counts(trials)
    if n_inst_rec == 0:
        return (
            f"No trial of {label} recovered the ground truth (0/{n_inst} instances over {len(judged)} judged seeds "
            f"in {n_set} {unit}); the instances fail by {_modes_text(counts, n_inst)}."
        )
    best = judged_settings.sort_values(["rate", "n_judged"], ascending=False).iloc[0]
    params = ", ".join(f"{short(c)}={fmt_value(best[c])}" for c in param_columns(settings) if not is_missing(best[c]))
    enough = judged_settings[judged_settings["n_judged"] >= min_seeds]
    few = (
        f" Only {len(enough)} of {n_set} {unit} have the {min_seeds} seeds the rule needs."
        if len(enough) < n_set
        else ""
    )
    return (
        f"No setting of {label} recovered ({rule}; 0 of {n_set} {unit}), "
        f"but {evidence(judged)} did; the best setting recovered {best['recovery']} instances "
        f"over {int(best['n_judged'])} seeds ({params or 'no swept parameters'}). "
        f"The failing instances fail by {_modes_text(counts, n_inst - n_inst_rec)}."
        f"{why_phrase(trials, judged_settings, ranked)}{few}"
    )


def why_phrase(trials: pd.DataFrame, settings: pd.DataFrame, ranked: Sequence[str]) -> str:
    """How failures differ on either side of the recovering band along the most important numeric parameter:
    ` Below topk 0.211, instances fail mostly by non-distinct matching (32/36); above 0.211, by low ML2R (35/36).`

    The band is the range of that parameter over the recovering settings (the best setting when none
    recovers). Each side names the failure mode most typical of it: the largest excess of its share of
    that side's instances over its share of the other side's (modes every failing instance has say nothing
    about where the boundary lies). Empty when no numeric parameter varies, no side fails, or both sides fail
    the same way (the answer's list of modes already says it); the caller leaves it out when nothing recovered.
    """
    judged = settings[settings["n_judged"] > 0] if len(settings) else settings
    numeric = [
        p
        for p in ranked
        if p in judged.columns
        and pd.api.types.is_numeric_dtype(judged[p])
        and not pd.api.types.is_bool_dtype(judged[p])
        and judged[p].nunique() > 1
    ]
    if not numeric or judged.empty:
        return ""
    param = numeric[0]
    good = judged[judged["recovers"]] if "recovers" in judged.columns else judged.iloc[:0]
    if good.empty:
        good = judged.sort_values(["rate", "n_judged"], ascending=False).iloc[:1]
    lo, hi = float(good[param].min()), float(good[param].max())
    inst = instances(trials)
    if param not in inst.columns or inst.empty:
        return ""
    sides = {
        f"below {short(param)} {fmt_value(lo)}": (inst[inst[param] < lo], inst[inst[param] > hi]),
        f"above {fmt_value(hi)}": (inst[inst[param] > hi], inst[inst[param] < lo]),
    }
    parts: list[str] = []
    modes: list[str] = []
    for i, (side, (rows, other)) in enumerate(sides.items()):
        failed = rows[~rows["success"]]
        if failed.empty:
            continue
        share = failed.explode("modes")["modes"].value_counts() / len(rows)
        if len(other):
            other_share = other[~other["success"]].explode("modes")["modes"].value_counts() / len(other)
            share = share - other_share.reindex(share.index).fillna(0.0)
        mode = str(share.idxmax())
        modes.append(mode)
        k = int(failed["modes"].apply(lambda m, mode=mode: mode in m).sum())
        if i == 1 and not parts:
            side = f"above {short(param)} {fmt_value(hi)}"
        lead = "instances fail mostly by " if not parts else "by "
        parts.append(f"{side}, {lead}{mode} ({format_rate(k, len(rows))})")
    if not parts or (len(modes) == 2 and modes[0] == modes[1]):
        return ""  # one failure mode on both sides says nothing about the boundary
    text = "; ".join(parts)
    return f" {text[0].upper()}{text[1:]}."


def _status_text(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts()
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def family_of(trials: pd.DataFrame) -> Any:
    """The family of a group of trials (the most common `family` value), or None when unknown."""
    from apd.targets.registry import FAMILIES

    kinds = trials["family"].dropna() if "family" in trials.columns else pd.Series(dtype=object)
    return FAMILIES.get(str(kinds.mode().iloc[0])) if len(kinds) else None


def best_trial(
    trials: pd.DataFrame,
    settings: pd.DataFrame,
    objectives: Sequence[str] = (),
    directions: Sequence[str] = (),
) -> pd.Series | None:
    """The single best trial: in a recovering setting, most instances recovered, best first objective,
    then the family's ranking metrics (`Column.better`), then the fewest identity-pattern errors."""
    done = trials[trials["status"] == "COMPLETE"].copy()
    if done.empty:
        return None
    good_ids = set(settings.loc[settings["recovers"], "setting_id"]) if len(settings) else set()
    keys: list[str] = []
    ascending: list[bool] = []
    done["_in_good"] = done["setting_id"].isin(good_ids)
    keys += ["_in_good", "success"]
    ascending += [False, False]
    if "n_recovered_instances" in done.columns:
        done["_rec"] = done["n_recovered_instances"] / done["n_judged_instances"].clip(lower=1)
        keys.append("_rec")
        ascending.append(False)
    if objectives and objectives[0] in done.columns:
        keys.append(objectives[0])
        ascending.append(not directions or directions[0] == "minimize")
    family = family_of(done)
    for column in family.columns if family is not None else ():
        col = f"metric.{column.key}"
        if column.better is not None and col in done.columns and col not in keys:
            keys.append(col)
            ascending.append(column.better == "low")
    if "metric.identity_error" in done.columns and "metric.identity_error" not in keys:
        keys.append("metric.identity_error")
        ascending.append(True)
    ordered = done.sort_values(keys, ascending=ascending, na_position="last", kind="stable")
    return ordered.iloc[0].drop(labels=["_in_good", "_rec"], errors="ignore")


def rerun_command(trial: pd.Series, fixed: dict[str, Any] | None = None, *, seed_target: bool = False) -> str:
    """`apd decompose EXPERIMENT --set k=v ... --set seed=N`: the exact command that reruns `trial`.

    EXPERIMENT is `experiment_ref` (a registered name or the absolute path of the config YAML), so
    the command works from any folder. `fixed` holds the sweep's non-swept overrides (they come
    first; swept values win on a clash); with `seed_target` the replica seed also picks the target.
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
    experiment = trial.get("experiment_ref")
    if is_missing(experiment):
        experiment = trial.get("experiment", "EXPERIMENT")
    parts = ["apd", "decompose", str(experiment)]
    for k, v in sets.items():
        parts += ["--set", f"{k}={v}"]
    return shlex.join(parts)


def target_label(trials: pd.DataFrame) -> str:
    """`TMS 5-2 (tms-5-2)`: the family's description of the target's spec, and its name."""
    target = str(trials["target"].dropna().iloc[0]) if trials["target"].notna().any() else "?"
    family = family_of(trials)
    if family is None:
        return target
    specs = trials["target_spec"].dropna().unique() if "target_spec" in trials.columns else []
    spec: dict[str, Any] = {}
    if len(specs):
        try:
            spec = json.loads(str(specs[0]))
        except json.JSONDecodeError:
            spec = {}
    text = family.describe(spec)
    varies = ", sizes vary" if len(specs) > 1 else ""
    return f"{text}{varies} ({target})" if text != target else target
