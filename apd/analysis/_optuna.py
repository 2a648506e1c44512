"""Parameter importances (Optuna PED-ANOVA) and Pareto fronts, from the Parquet rows or the stored study."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from apd.analysis._columns import PARAM, is_missing, objective_columns, short, varying_params
from apd.analysis._outcomes import add_outcomes

Direction = Literal["minimize", "maximize"]
RECOVERY = "recovery"
STUDY_FILES = ("optuna.db", "optuna.journal", "optuna.log")


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logging (one line per in-memory study) for the duration."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def infer_distribution(values: pd.Series, *, declared: BaseDistribution | None = None) -> BaseDistribution | None:
    """The Optuna distribution a swept column was drawn from; None if the column is constant.

    A `declared` range (from the sweep spec) wins when it holds every value. Otherwise numbers become
    Int/Float ranges over the values seen (log-scaled when positive and spanning >= 2 decades) and
    anything else becomes categorical.
    """
    v = values.dropna()
    if v.astype(str).nunique() < 2:
        return None
    if declared is not None and all(declared._contains(declared.to_internal_repr(_plain(x))) for x in v):
        return declared
    if pd.api.types.is_bool_dtype(v) or not pd.api.types.is_numeric_dtype(v):
        choices = sorted({_plain(x) for x in v}, key=str)
        return CategoricalDistribution(choices)
    low, high = float(v.min()), float(v.max())
    use_log = low > 0 and high / low >= 100
    if pd.api.types.is_integer_dtype(v):
        return IntDistribution(int(low), int(high), log=use_log)
    return FloatDistribution(low, high, log=use_log)


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars (Optuna's categorical choices must be plain)."""
    return x.item() if isinstance(x, np.generic) else x


def _frozen(row: pd.Series, dists: dict[str, BaseDistribution], values: list[float]) -> optuna.trial.FrozenTrial:
    params = {}
    used = {}
    for col, dist in dists.items():
        value = row[col]
        if is_missing(value):
            continue  # a conditional or absent parameter: Optuna's inactive regime
        value = _plain(value)
        if isinstance(dist, IntDistribution):
            value = int(value)
        elif isinstance(dist, FloatDistribution):
            value = float(value)
        params[short(col)] = value
        used[short(col)] = dist
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        values=values,
        params=params,
        distributions=used,
        user_attrs={"trial_id": str(row["trial_id"])},
    )


def study_from_trials(
    trials: pd.DataFrame,
    *,
    values: Sequence[str] | None = None,
    directions: Sequence[Direction] | None = None,
    ranges: dict[str, BaseDistribution] | None = None,
) -> optuna.Study:
    """An in-memory Optuna study of the COMPLETE rows whose `values` columns (default: the objectives) are finite.

    `ranges` gives declared distributions by dotted parameter name; others are inferred from the values.
    """
    cols = list(values) if values is not None else objective_columns(trials)
    if not cols:
        raise ValueError("study_from_trials: the trials have no objective column")
    dirs: list[Direction] = list(directions) if directions is not None else ["minimize"] * len(cols)
    if len(dirs) != len(cols):
        raise ValueError(f"study_from_trials: {len(cols)} value columns but {len(dirs)} directions")
    ranges = ranges or {}
    dists = {
        c: d
        for c in varying_params(trials)
        if (d := infer_distribution(trials[c], declared=ranges.get(short(c)))) is not None
    }
    with quiet_optuna():
        study = optuna.create_study(directions=dirs)
    done = trials[trials["status"] == "COMPLETE"]
    frozen = []
    for _, row in done.iterrows():
        vals = [float(row[c]) if not is_missing(row[c]) else math.nan for c in cols]
        if all(math.isfinite(v) for v in vals):
            frozen.append(_frozen(row, dists, vals))
    study.add_trials(frozen)
    return study


def load_stored_study(out: str | Path) -> optuna.Study | None:
    """The sweep's own Optuna study (`OUT/optuna.db` or a journal file), or None if absent or unreadable."""
    d = Path(out)
    for name in STUDY_FILES:
        path = d / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".db"):
                storage: Any = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
            else:
                from optuna.storages.journal import JournalFileBackend

                storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            summaries = optuna.get_all_study_summaries(storage)
            if len(summaries) != 1:
                return None
            with quiet_optuna():
                return optuna.load_study(study_name=summaries[0].study_name, storage=storage)
        except Exception:  # a stale or foreign study file is not worth failing the report
            return None
    return None


def _evaluate(
    study: optuna.Study,
    *,
    params: list[str] | None,
    target_quantile: float,
    target: Any = None,
) -> dict[str, float]:
    evaluator = PedAnovaImportanceEvaluator(target_quantile=target_quantile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA warns on small regimes and explicit targets
        return optuna.importance.get_param_importances(study, evaluator=evaluator, params=params, target=target)


def _complete_params(study: optuna.Study) -> list[str]:
    names: set[str] = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        names.update(t.params)
    return sorted(n for n in names if n != "seed")


def importances_for_objectives(
    study: optuna.Study, *, names: Sequence[str] | None = None, target_quantile: float = 0.1
) -> pd.DataFrame:
    """PED-ANOVA importances of every objective of `study`: long frame (target, param, importance).

    Parameters are named as in the Parquet file (`param.<key>`). Needs >= 2 COMPLETE trials and a
    parameter that varies; otherwise the frame is empty.
    """
    params = _complete_params(study)
    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_done < 2 or not params:
        return _long([])
    labels = (
        [f"{n} (objective)" for n in names]
        if names is not None
        else [f"objective {i}" for i in range(len(study.directions))]
    )
    rows = []
    for i, (label, direction) in enumerate(zip(labels, study.directions, strict=True)):
        sign = 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        target = None if len(study.directions) == 1 else (lambda t, i=i, s=sign: s * t.values[i])
        imp = _evaluate(study, params=params, target_quantile=target_quantile, target=target)
        rows += [(label, PARAM + p, v) for p, v in imp.items()]
    return _long(rows)


def recovery_importances(
    trials: pd.DataFrame, *, ranges: dict[str, BaseDistribution] | None = None, share: float = 0.9
) -> pd.DataFrame:
    """PED-ANOVA importances for recovering: which parameters separate the trials whose instances recover.

    Uses the judged trials (COMPLETE, DIVERGED, PRUNED) with value 1 - (share of their instances
    recovered), and a target quantile equal to the share of trials with at least `share` of their
    instances recovered, so the "top" trials are exactly those. Empty when no trial, or every
    trial, is such a trial.
    """
    df = trials if "instance_success" in trials.columns else add_outcomes(trials)
    judged = df[df["judged"] & (df["n_judged_instances"] > 0)].copy()
    rate = judged["n_recovered_instances"] / judged["n_judged_instances"]
    n, k = len(judged), int((rate >= share - 1e-9).sum())
    if n < 2 or k in (0, n) or not varying_params(judged):
        return _long([])
    judged["status"] = "COMPLETE"  # a diverged or pruned seed is a plain failure here
    judged["_failed"] = (1.0 - rate).astype(float)
    study = study_from_trials(judged, values=["_failed"], directions=["minimize"], ranges=ranges)
    params = _complete_params(study)
    imp = _evaluate(study, params=params, target_quantile=k / n)
    return _long([(RECOVERY, PARAM + p, v) for p, v in imp.items()])


def _long(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["target", "param", "importance"])
    return df.sort_values(["target", "importance"], ascending=[True, False], kind="stable").reset_index(drop=True)


def ranked_params(importances: pd.DataFrame, fallback: Sequence[str] = ()) -> list[str]:
    """Parameters by importance (recovery first, then the mean over objectives), then any left in `fallback`."""
    if importances.empty:
        return list(fallback)
    rec = importances[importances["target"] == RECOVERY]
    base = rec if not rec.empty else importances
    order = base.groupby("param")["importance"].mean().sort_values(ascending=False, kind="stable").index.tolist()
    return order + [p for p in fallback if p not in order]


def pareto_front(trials: pd.DataFrame, objectives: Sequence[str], directions: Sequence[Direction]) -> pd.DataFrame:
    """The COMPLETE trials with finite objectives that no other such trial dominates."""
    if len(objectives) != len(directions):
        raise ValueError(f"pareto_front: {len(objectives)} objectives but {len(directions)} directions")
    done = trials[trials["status"] == "COMPLETE"]
    vals = done[list(objectives)].astype(float).to_numpy()
    finite = np.isfinite(vals).all(axis=1)
    done, vals = done[finite], vals[finite]
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    loss = vals * signs  # lower is better in every column
    # row j dominates row i: no worse everywhere and better somewhere
    no_worse = (loss[None, :, :] <= loss[:, None, :]).all(axis=2)
    better = (loss[None, :, :] < loss[:, None, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=1)
    return done[~dominated]
