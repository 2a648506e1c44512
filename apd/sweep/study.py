"""The Optuna study on disk (OUT/optuna.db): creating it, and resuming it after a killed driver.

Resume starts a *new* engine run on the stored study (never `Tuner.restore`, which clashes with
an external Optuna storage). Before that, the study and the Parquet rows are reconciled:

* a trial Optuna still calls RUNNING whose Parquet row says it ended -> told that outcome
  (the driver died between writing the row and telling Optuna);
* a trial RUNNING in both -> interrupted: marked FAIL with `apd.interrupted`, its row and history
  dropped, and its point enqueued again (same params, seed and draw), so it reruns under a new id;
* a trial Optuna finished (pruned, or failed in Ray) whose row is missing or RUNNING -> row
  rebuilt from the trial and its run folder (`OUT/trials/<id>`: metrics.json, history.jsonl) or
  Ray's record of it (`OUT/ray/attempt-*/<id>/result.json`), so deleted or unreadable Parquet
  files come back with their metrics and curves;
* a trial that does not count (interrupted by an earlier resume) but still has a row -> row
  dropped (a resume whose Parquet write failed left it RUNNING);
* a draw whose replicas the driver had not all queued when it died -> the missing ones queued.

A trial's point is its enqueued parameters overlaid with what it suggested (`trial_params`): a
replica popped from the queue but lost before it suggested anything has only the former.

Interrupted trials do not count towards the total; everything else finished does.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from apd.errors import ApdError, ConfigError
from apd.sweep.outdir import output_error
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
from apd.sweep.trial import HISTORY_FILE, TrialOutcome, TrialPoint, judge_run, trial_id_of

STUDY_FILE = "optuna.db"
PARENT_RUN_ATTR = "apd.mlflow_parent_run_id"
ATTEMPTS_ATTR = "apd.attempts"
UID_ATTR = "apd.sweep_uid"
"""Names this sweep's MLflow parent run in any store (what `apd sync` finds it by)."""
RUN_ID_ATTR = "apd.mlflow_run_id"
TRACKING_ATTR = "apd.mlflow_tracking_uri"
EXPERIMENT_ATTR = "apd.mlflow_experiment_id"
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

    @property
    def uid(self) -> str:
        """The sweep's id for MLflow (made on first use for sweeps from before it existed)."""
        uid = self.study.user_attrs.get(UID_ATTR)
        if uid is None:
            uid = uuid.uuid4().hex
            self.study.set_user_attr(UID_ATTR, uid)
        return str(uid)

    def set_trial_attr(self, number: int, key: str, value: Any) -> None:
        """A user attribute on a running trial (optuna-dashboard shows them)."""
        storage = self.storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.name), number)
        storage.set_trial_user_attr(trial_id, key, value)


def storage_for(out: Path, *, started: bool = True) -> RDBStorage:
    """OUT's study storage (created if missing). A file that is no Optuna SQLite database, or one
    that cannot be written (disk full, read-only), is a one-line error naming it."""
    path = out.resolve() / STUDY_FILE
    try:
        return RDBStorage(f"sqlite:///{path}")
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as e:
        raise storage_error(path, e, started=started) from None


def storage_error(path: Path, e: BaseException, *, started: bool = True) -> ApdError:
    """sqlalchemy's messages carry the SQL and a link; keep the driver's own words."""
    cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
    orig = getattr(cause, "orig", None) or cause
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "not a database" in reason or "malformed" in reason:
        return ConfigError(f"{path}: not a readable Optuna study ({reason})")
    return output_error(path, reason, started=started)


def trial_params(t: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters: those it was enqueued with (Optuna keeps them as `fixed_params`,
    and reads them the same way) overlaid with those it suggested."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def counts(t: FrozenTrial) -> bool:
    """A trial that ended and was not lost with a killed driver."""
    return t.state in DONE_STATES and not t.user_attrs.get(INTERRUPTED_ATTR)


def create_study(sweep: ValidatedSweep, out: Path) -> StudyHandle:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(out, started=False)
    study = optuna.create_study(storage=storage, study_name=sweep.name, directions=directions(sweep))
    _name_metrics(study, sweep)
    if sweep.spec.search.algorithm == "grid":
        enqueue_grid(study, sweep)
    study.set_user_attr(ATTEMPTS_ATTR, 1)
    study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
    return StudyHandle(storage, sweep.name, study, 1)


def _name_metrics(study: optuna.Study, sweep: ValidatedSweep) -> None:
    """Objective names for optuna-dashboard (experimental in Optuna, stable in use since 3.2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in sweep.spec.objective])


def load_study(sweep_name: str, out: Path) -> tuple[RDBStorage, optuna.Study]:
    """OUT's stored study, or a one-line error naming the file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (out / STUDY_FILE).is_file():
        raise ConfigError(f"{out}: no {STUDY_FILE} (the sweep's study)")
    storage = storage_for(out)
    try:
        return storage, optuna.load_study(study_name=sweep_name, storage=storage)
    except KeyError:
        raise ConfigError(f"{out / STUDY_FILE}: holds no study named {sweep_name!r}") from None


def resume_study(
    sweep: ValidatedSweep, out: Path, store: ResultsStore, echo: Callable[[str], None] = print
) -> StudyHandle:
    storage, study = load_study(sweep.name, out)
    attempt = int(study.user_attrs.get(ATTEMPTS_ATTR, 1)) + 1
    study.set_user_attr(ATTEMPTS_ATTR, attempt)
    if not study.metric_names:
        _name_metrics(study, sweep)
    handle = StudyHandle(storage, sweep.name, study, attempt)
    handle.reruns = reconcile(study, store, echo)
    return handle


def reconcile(study: optuna.Study, store: ResultsStore, echo: Callable[[str], None] = print) -> int:
    """Make the study and the rows agree after a killed driver (module docstring); returns reruns."""
    reruns = 0
    rebuilt = Rebuilt()
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
            _row_from_trial(store, t, rebuilt)
        elif not counts(t) and row is not None:
            store.drop(tid)  # interrupted earlier: its row should have gone then
        elif counts(t) and not store.history.get(tid):
            rebuilt.history += _history_from_folders(store, tid)
    _complete_draws(study, store.sweep)
    store.write()
    if rebuilt.rows or rebuilt.history:
        echo(rebuilt.describe(store.out))
    return reruns


@dataclass
class Rebuilt:
    rows: int = 0
    metrics: int = 0
    history: int = 0

    def describe(self, out: Path) -> str:
        parts = []
        if self.rows:
            parts.append(f"{self.rows} trial rows (metrics of {self.metrics} from their run folders)")
        if self.history:
            parts.append(f"the step history of {self.history} trials")
        return f"{out}: rebuilt {' and '.join(parts)} from {STUDY_FILE}, trials/ and ray/"


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


def _row_from_trial(store: ResultsStore, t: FrozenTrial, rebuilt: Rebuilt) -> None:
    """Optuna finished the trial but its row is missing or RUNNING (the driver died before recording
    it, or the Parquet files were lost): rebuild it from the trial, its run folder and Ray's record."""
    tid = trial_id_of(t.number)
    previous = store.rows.get(tid)
    if previous is None:
        store.start(point_of(t), mlflow_run_id=t.user_attrs.get(RUN_ID_ATTR))
    status = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED"}.get(t.state, "FAILED")
    error = None if status != "FAILED" else "trial failed; the sweep driver stopped before recording why"
    values = list(t.values) if t.state == TrialState.COMPLETE and t.values is not None else None
    outcome = TrialOutcome(status, error=error, objective=values)  # type: ignore[arg-type]
    metrics = _read_json(store.out / "trials" / tid / "metrics.json")
    if isinstance(metrics, dict) and status != "PRUNED":
        judged = judge_run(
            str(metrics.get("status")),
            int(metrics.get("steps_done") or 0),
            metrics,
            metrics.get("error"),
            store.sweep.spec.objective,
        )
        if judged.status != "COMPLETE" or status == "COMPLETE":
            outcome = judged  # the run's own verdict, with its metrics (Optuna knows only FAIL)
        rebuilt.metrics += 1
    rebuilt.history += _history_from_folders(store, tid)
    last = _ray_records(store.out, tid)
    outcome.node = last[-1].get("apd.node") if last else None
    store.end(tid, outcome)
    row = store.rows[tid]
    if t.datetime_start is not None and previous is None:
        row["start_time"] = t.datetime_start.astimezone(UTC)
    row["end_time"] = (t.datetime_complete or datetime.now()).astimezone(UTC)
    rebuilt.rows += 1


def _history_from_folders(store: ResultsStore, tid: str) -> int:
    """The step records of `tid` from Ray's result.json (every attempt) and the run folder's
    history.jsonl; 1 if any were found."""
    records = [r["apd.record"] for r in _ray_records(store.out, tid) if r.get("apd.kind") == "step"]
    path = store.out / "trials" / tid / HISTORY_FILE
    if path.is_file():
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records or tid not in store.rows:
        return 0
    for record in records:
        store.add_step(tid, record)
    return 1


def _ray_records(out: Path, tid: str) -> list[dict[str, Any]]:
    records = []
    for path in sorted(out.glob(f"ray/attempt-*/{tid}/result.json")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
