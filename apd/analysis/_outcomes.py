"""Outcomes per trial and per model instance, from the one verdict (`apd.metrics.verdict.decide`).

Every (trial, instance) is one judged replicate. A COMPLETE trial's instances are judged by its
stored verdict (`recovered_per_instance`, and `check_<name>_per_instance` for the checks that
failed); results written before the checks were stored (schema 1) get their failed checks from
`decide` on the stored metrics, skipping checks those results never measured. A DIVERGED or PRUNED
trial counts every instance as failed (mode `diverged`/`pruned`); FAILED (an exception) and RUNNING
trials are not judged. Failure modes are multi-label: an instance failing three checks counts
under all three.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from apd.analysis._columns import METRIC, as_list, is_missing
from apd.config import EvalConfig

JUDGED = ("COMPLETE", "DIVERGED", "PRUNED")
"""Statuses that count as a seed of a setting. FAILED (an exception) and RUNNING trials say nothing
about the method, so they are counted apart and never enter a success rate."""

RECOVERED = "recovered"
PARTLY = "partly recovered"
OUTCOMES = (RECOVERED, PARTLY, "not recovered", "diverged", "pruned", "failed", "running")
"""Trial outcomes: every instance recovered, some, none; or the status that ended the trial."""
_STATUS_OUTCOME = {"DIVERGED": "diverged", "PRUNED": "pruned", "FAILED": "failed", "RUNNING": "running"}
NOT_RECOVERED = "not recovered"
"""The mode of an unrecovered instance whose stored verdict names no failed check."""
CHECK = "check_"
"""Prefix of the stored per-check verdicts (`metric.check_<name>_per_instance`)."""


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
        elif not is_missing(value) and not isinstance(value, list | tuple | np.ndarray):
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def _family(row: pd.Series) -> str | None:
    kind = row.get("family")
    return kind if isinstance(kind, str) and kind else None


def _labels(kind: str | None, names: list[str]) -> tuple[str, ...]:
    from apd.targets.registry import FAMILIES

    family = FAMILIES.get(kind or "")
    checks = [c.name for c in family.checks] if family is not None else []
    failure = {c.name: c.failure for c in family.checks} if family is not None else {}
    ordered = sorted(names, key=lambda n: checks.index(n) if n in checks else len(checks))
    return tuple(failure.get(n, n) for n in ordered) or (NOT_RECOVERED,)


def instance_verdicts(row: pd.Series, ev: EvalConfig) -> tuple[list[bool], list[tuple[str, ...]]]:
    """Per instance of one trial: recovered, and the failure modes when not ([], [] if not judged)."""
    from apd.metrics.verdict import decide

    status = row["status"]
    if status not in JUDGED:
        return [], []
    n = row.get("n_instances")
    if status != "COMPLETE":
        count = int(n) if not is_missing(n) else 1
        return [False] * count, [(_STATUS_OUTCOME[status],)] * count
    metrics = row_metrics(row)
    if not any(k.endswith("_per_instance") for k in metrics):  # only the trial's verdict is known
        count = int(n) if not is_missing(n) else 1
        share = row.get("recovered")
        share = (1.0 if row.get("recovered_all") is True else 0.0) if is_missing(share) else float(share)
        k = round(share * count)
        return [True] * k + [False] * (count - k), [()] * k + [(NOT_RECOVERED,)] * (count - k)
    stored = {k[len(CHECK) : -len("_per_instance")]: v for k, v in metrics.items() if k.startswith(CHECK)}
    success = metrics.get("recovered_per_instance")
    if success is None or not stored:
        verdict = decide(metrics, ev, family=_family(row), measured_only=row.get("schema") == "1")
        if success is None:
            success = verdict.recovered_per_instance
        failed = [list(f) for f in verdict.failed]
    else:
        failed = [[name for name, ok in stored.items() if i < len(ok) and not ok[i]] for i in range(len(success))]
    ok = [bool(s) for s in success]
    modes = [() if good else _labels(_family(row), failed[i] if i < len(failed) else []) for i, good in enumerate(ok)]
    return ok, modes


def add_outcomes(trials: pd.DataFrame, eval_cfg: EvalConfig | None = None) -> pd.DataFrame:
    """A copy of `trials` with per-trial `judged`, `success` (every instance recovered), `outcome`,
    `n_judged_instances`, `n_recovered_instances`, `failure_modes` (the distinct modes of its
    instances) and the per-instance lists `instance_success` and `instance_modes`."""
    ev = eval_cfg or EvalConfig()
    df = trials.copy()
    if "schema" not in df.columns:
        df["schema"] = "2"
    verdicts = [instance_verdicts(row, ev) for _, row in df.iterrows()]
    df["judged"] = df["status"].isin(JUDGED).astype(bool)
    df["instance_success"] = [v[0] for v in verdicts]
    df["instance_modes"] = [v[1] for v in verdicts]
    df["n_judged_instances"] = [len(v[0]) for v in verdicts]
    df["n_recovered_instances"] = [sum(v[0]) for v in verdicts]
    df["success"] = [df["judged"].iloc[i] and bool(v[0]) and all(v[0]) for i, v in enumerate(verdicts)]
    df["success"] = df["success"].astype(bool)
    outcome = df["status"].map(_STATUS_OUTCOME).fillna(NOT_RECOVERED)
    some = (df["status"] == "COMPLETE") & (df["n_recovered_instances"] > 0)
    outcome[some] = PARTLY
    outcome[df["success"]] = RECOVERED
    df["outcome"] = pd.Categorical(outcome, categories=OUTCOMES)
    df["failure_modes"] = [sorted({m for modes in v[1] for m in modes}) for v in verdicts]
    return df


INSTANCE_KEYS = ("out", "sweep", "trial_id", "experiment", "setting_id", "seed", "method", "target", "status")


def instances(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per judged (trial, instance): the trial's keys and parameters, `instance`, `success`, `modes`."""
    df = trials if "instance_success" in trials.columns else add_outcomes(trials)
    judged = df[df["judged"] & (df["n_judged_instances"] > 0)]
    params = [c for c in judged.columns if str(c).startswith("param.")]
    keys = [c for c in (*INSTANCE_KEYS, *params) if c in judged.columns]
    rows = []
    for _, row in judged.iterrows():
        for i, (ok, modes) in enumerate(zip(row["instance_success"], row["instance_modes"], strict=True)):
            rows.append({**{k: row[k] for k in keys}, "instance": i, "success": ok, "modes": tuple(modes)})
    columns = [*keys, "instance", "success", "modes"]
    out = pd.DataFrame(rows, columns=columns)
    out["success"] = out["success"].astype(bool)
    return out


def failure_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Failure modes of the unrecovered judged instances, most common first (multi-label).

    Columns: `mode`, `instances` (instances failing with it), `trials` (trials with such an instance).
    """
    inst = instances(trials)
    failed = inst[~inst["success"]].explode("modes")
    if failed.empty:
        return pd.DataFrame(columns=["mode", "instances", "trials"])
    g = failed.groupby("modes")
    ids = [c for c in ("out", "trial_id") if c in failed.columns]
    out = pd.DataFrame({"instances": g.size(), "trials": g[ids].apply(lambda d: len(d.drop_duplicates()))})
    out = out.rename_axis("mode").reset_index()
    return out.sort_values(["instances", "mode"], ascending=[False, True], kind="stable").reset_index(drop=True)
