"""The Optuna study on disk (OUT/optuna.db): creating it, and resuming it after a killed driver.

Resume starts a *new* engine run on the stored study (never `Tuner.restore`, which clashes with
an external Optuna storage). Before that, the study and the Parquet rows are reconciled:

* a trial Optuna still calls RUNNING whose Parquet row says it ended -> told that outcome
  (the driver died between writing the row and telling Optuna);
* a trial RUNNING in both -> interrupted: marked FAIL with `apd.interrupted`, its row and history
  dropped, and its point enqueued again (same params, seed and draw), so it reruns under a new id;
* a trial Optuna finished (pruned, or failed in Ray) whose row is missing or RUNNING -> row fixed;
* a draw whose replicas the driver had not all queued when it died -> the missing ones queued.

A trial's point is its enqueued parameters overlaid with what it suggested (`trial_params`): a
replica popped from the queue but lost before it suggested anything has only the former.

Interrupted trials do not count towards the total; everything else finished does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from apd.errors import ConfigError
from apd.sweep.results import ResultsStore
from apd.sweep.space import (
    DRAW_ATTR,
    INTERRUPTED_ATTR,
    RERUN_ATTR,
    SEED_ATTR,
    directions,
    enqueue_grid,
    enqueue_replicas,
    replica_key,
)
from apd.sweep.spec import ValidatedSweep, setting_id
from apd.sweep.trial import TrialOutcome, TrialPoint, trial_id_of

STUDY_FILE = "optuna.db"
PARENT_RUN_ATTR = "apd.mlflow_parent_run_id"
ATTEMPTS_ATTR = "apd.attempts"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATE_OF = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAILED": TrialState.FAIL}


@dataclass
class StudyHandle:
    storage: RDBStorage
    name: str
    study: optuna.Study
    attempt: int
    """How many times this sweep has been started (1 for a fresh one)."""
    reruns: int = 0
    """Interrupted trials enqueued again by this resume."""

    def finished(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False) if counts(t))

    def remaining(self, total: int) -> int:
        return max(0, total - self.finished())

    @property
    def parent_run_id(self) -> str | None:
        return self.study.user_attrs.get(PARENT_RUN_ATTR)

    def set_parent_run_id(self, run_id: str) -> None:
        self.study.set_user_attr(PARENT_RUN_ATTR, run_id)


def storage_for(out: Path) -> RDBStorage:
    return RDBStorage(f"sqlite:///{out.resolve() / STUDY_FILE}")


def trial_params(t: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters: those it was enqueued with (Optuna keeps them as `fixed_params`,
    and reads them the same way) overlaid with those it suggested."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def counts(t: FrozenTrial) -> bool:
    """A trial that ended and was not lost with a killed driver."""
    return t.state in DONE_STATES and not t.user_attrs.get(INTERRUPTED_ATTR)


def create_study(sweep: ValidatedSweep, out: Path) -> StudyHandle:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(out)
    study = optuna.create_study(storage=storage, study_name=sweep.name, directions=directions(sweep))
    if sweep.spec.search.algorithm == "grid":
        enqueue_grid(study, sweep)
    study.set_user_attr(ATTEMPTS_ATTR, 1)
    return StudyHandle(storage, sweep.name, study, 1)


def resume_study(sweep: ValidatedSweep, out: Path, store: ResultsStore) -> StudyHandle:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (out / STUDY_FILE).is_file():
        raise ConfigError(f"{out}: no {STUDY_FILE} to resume")
    storage = storage_for(out)
    try:
        study = optuna.load_study(study_name=sweep.name, storage=storage)
    except KeyError:
        raise ConfigError(f"{out}/{STUDY_FILE}: holds no study named {sweep.name!r}") from None
    attempt = int(study.user_attrs.get(ATTEMPTS_ATTR, 1)) + 1
    study.set_user_attr(ATTEMPTS_ATTR, attempt)
    handle = StudyHandle(storage, sweep.name, study, attempt)
    handle.reruns = reconcile(study, store)
    return handle


def reconcile(study: optuna.Study, store: ResultsStore) -> int:
    """Make the study and the rows agree after a killed driver (module docstring); returns reruns."""
    reruns = 0
    for t in study.get_trials(deepcopy=False):
        tid = trial_id_of(t.number)
        row = store.rows.get(tid)
        ended = row is not None and row["status"] != "RUNNING"
        if t.state == TrialState.RUNNING and ended:
            assert row is not None
            _tell_from_row(study, t, row)
        elif t.state == TrialState.RUNNING:
            reruns += _requeue(study, t)
            store.drop(tid)
        elif counts(t) and not ended:
            _row_from_trial(store, t)
    _complete_draws(study, store.sweep)
    store.write()
    return reruns


def _tell_from_row(study: optuna.Study, t: FrozenTrial, row: dict[str, Any]) -> None:
    state = STATE_OF.get(row["status"], TrialState.FAIL)
    values = row["objective"] if state == TrialState.COMPLETE else None
    study.tell(t.number, values, state=state, skip_if_finished=True)


def _requeue(study: optuna.Study, t: FrozenTrial) -> int:
    study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    if SEED_ATTR not in t.user_attrs:  # lost before its point was chosen: nothing to rerun
        return 0
    draw = t.user_attrs.get(DRAW_ATTR, t.number)
    attrs = {SEED_ATTR: t.user_attrs[SEED_ATTR], DRAW_ATTR: draw, RERUN_ATTR: trial_id_of(t.number)}
    study.enqueue_trial(trial_params(t), user_attrs=attrs)
    return 1


def _complete_draws(study: optuna.Study, sweep: ValidatedSweep) -> None:
    """Queue the members of each draw that no trial holds: a driver killed while a fresh draw was
    queueing its replicas left them out."""
    drawn: dict[int, dict[str, Any]] = {}
    held: dict[int, set[tuple[str, int]]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(INTERRUPTED_ATTR) or SEED_ATTR not in t.user_attrs:
            continue
        params, draw = trial_params(t), int(t.user_attrs.get(DRAW_ATTR, t.number))
        drawn.setdefault(draw, params)
        held.setdefault(draw, set()).add(replica_key(sweep, params, int(t.user_attrs[SEED_ATTR])))
    for draw, params in drawn.items():
        enqueue_replicas(study, sweep, params, draw, held[draw])


def point_of(t: FrozenTrial) -> TrialPoint:
    seed = int(t.user_attrs.get(SEED_ATTR, 0))
    draw = int(t.user_attrs.get(DRAW_ATTR, t.number))
    params = trial_params(t)
    return TrialPoint(t.number, trial_id_of(t.number), seed, draw, setting_id(params), params)


def _row_from_trial(store: ResultsStore, t: FrozenTrial) -> None:
    """Optuna finished the trial but the driver died before recording it: record what Optuna knows."""
    tid = trial_id_of(t.number)
    previous = store.rows.get(tid)
    if previous is None:
        store.start(point_of(t))
    status = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED"}.get(t.state, "FAILED")
    error = None if status != "FAILED" else "trial failed; the sweep driver stopped before recording why"
    values = list(t.values) if t.state == TrialState.COMPLETE and t.values is not None else None
    store.end(tid, TrialOutcome(status, error=error, objective=values))  # type: ignore[arg-type]
    row = store.rows[tid]
    if t.datetime_start is not None and previous is None:
        row["start_time"] = t.datetime_start.astimezone(UTC)
    row["end_time"] = (t.datetime_complete or datetime.now()).astimezone(UTC)
