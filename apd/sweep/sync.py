"""Replay a sweep's record in OUT into MLflow: `apd sync OUT`, and the start of every `--resume`.

OUT is the record (Parquet rows and step history, run folders); MLflow is a view of it that a dead
server or a killed driver can leave incomplete. The sync finds the sweep's parent run by the
study's `apd.sweep_uid` (so it works on any store, e.g. a new SQLite file after a dead server) and
makes it hold one child per finished trial:

* a missing child is created with its params, tags, step curves (history.parquet; timestamps
  spread between the trial's start and end), final metrics, status, times and run folder;
* a child left RUNNING (the driver died) gets its missing steps, final values and status;
* a finished child that lacks some of its run folder's files (an upload cut short) gets them;
* a RUNNING child of a trial that has no row any more (interrupted) is marked KILLED and
  `apd.interrupted`;
* the parent gets the status counts and status only when they differ, so a second sync (or a
  resume with nothing to run) changes nothing, and moves no end time.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apd.errors import ConfigError
from apd.sweep.lock import SweepLock
from apd.sweep.outdir import SPEC_FILE
from apd.sweep.spec import ValidatedSweep, load_spec
from apd.sweep.trial import TrialOutcome, TrialPoint, one_line

if TYPE_CHECKING:  # MLflow and pyarrow load when a sync runs, not when the CLI is built
    from apd.sweep.results import ResultsStore
    from apd.sweep.tracking import Tracker

TRIALS_DIR = "trials"


@dataclass
class SyncReport:
    parent: str = "unchanged"
    created: int = 0
    completed: int = 0
    artifacts: int = 0
    interrupted: int = 0
    unchanged: int = 0
    ids_changed: bool = False

    @property
    def changed(self) -> bool:
        return self.parent != "unchanged" or bool(self.created + self.completed + self.artifacts + self.interrupted)

    def describe(self) -> str:
        parts = [f"parent run {self.parent}", f"{self.created} trial runs created"]
        if self.completed:
            parts.append(f"{self.completed} completed")
        if self.artifacts:
            parts.append(f"{self.artifacts} given their artifacts")
        if self.interrupted:
            parts.append(f"{self.interrupted} marked interrupted")
        parts.append(f"{self.unchanged} unchanged")
        return ", ".join(parts)


def _ms(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


def _point(row: dict[str, Any]) -> TrialPoint:
    tid = row["trial_id"]
    return TrialPoint(int(tid[1:]), tid, int(row["seed"]), int(row["draw"]), row["setting_id"], row["params"])


def sync_runs(
    tracker: Tracker,
    sweep: ValidatedSweep,
    out: Path,
    store: ResultsStore,
    uid: str,
    known_parent: str | None = None,
) -> SyncReport:
    """Make the MLflow store hold what OUT holds (module docstring); `tracker.open` was called.
    `known_parent`: the parent run id the study recorded (found by it when it lacks the uid tag)."""
    from apd.sweep.tracking import KIND_TAG

    report = SyncReport()
    rows = [store.rows[k] for k in sorted(store.rows)]
    finished = [r for r in rows if r["status"] != "RUNNING"]
    parent = tracker.find_sweep(uid, known_parent)
    if parent is None:
        starts = [_ms(r["start_time"]) for r in rows if r.get("start_time") is not None]
        spec = sweep.resolved_dict() | {"output": str(out)}
        tracker.start_sweep(sweep.name, store.engine, spec, uid, start_ms=min(starts, default=None))  # type: ignore[type-var]
        if (out / SPEC_FILE).is_file():
            tracker.log_sweep_file(out / SPEC_FILE)
        tracker.share_view(sweep)
        report.parent = "created"
    children = tracker.children()
    outcomes = store.outcomes()
    for row in finished:
        tid = row["trial_id"]
        run = children.get(tid)
        folder = out / TRIALS_DIR / tid
        if run is None:
            run_id = _create(tracker, sweep, store, row, outcomes[tid])
            if folder.is_dir():
                tracker.log_artifacts(run_id, folder)
            report.created += 1
        else:
            run_id = run.info.run_id
            if KIND_TAG not in run.data.tags:  # a run from before the tag: the saved view filters on it
                tracker.client.set_tag(run_id, KIND_TAG, "trial")
            if run.info.status == "RUNNING":
                _log_steps(tracker, store, row, run_id, skip=tracker.logged_steps(run_id, _first_key(store, tid)))
                tracker.end_trial(run_id, outcomes[tid], end_ms=_ms(row.get("end_time")))
                report.completed += 1
            if folder.is_dir() and tracker.lacks_artifacts(run_id, folder):
                tracker.log_artifacts(run_id, folder)
                report.artifacts += 1
            elif run.info.status != "RUNNING":
                report.unchanged += 1
        if row.get("mlflow_run_id") is None:
            row["mlflow_run_id"] = run_id
            report.ids_changed = True
    for tid, run in children.items():
        if run.info.status == "RUNNING" and tid not in store.rows:
            tracker.mark_interrupted(run.info.run_id)  # its trial was lost with a killed driver
            report.interrupted += 1
    _settle_parent(tracker, sweep, store, parent, report)
    return report


def _settle_parent(
    tracker: Tracker, sweep: ValidatedSweep, store: ResultsStore, parent: Any, report: SyncReport
) -> None:
    from apd.sweep.recorder import status_counts
    from apd.sweep.trial import COUNT_KEYS

    statuses = Counter(r["status"] for r in store.rows.values())
    counts = status_counts(statuses, sweep.total_trials)
    have = parent.data.metrics if parent is not None else {}
    if any(have.get(k) != counts[k] for k in COUNT_KEYS):
        tracker.log_counts(counts)
        report.parent = "updated" if report.parent == "unchanged" else report.parent
    done = sum(n for s, n in statuses.items() if s != "RUNNING")
    want = "FINISHED" if done >= sweep.total_trials and not statuses.get("RUNNING") else "KILLED"
    if parent is None or parent.info.status != want:
        ends = [_ms(r["end_time"]) for r in store.rows.values() if r.get("end_time") is not None]
        assert tracker.parent_id is not None
        tracker.client.set_terminated(tracker.parent_id, want, end_time=max(ends, default=None))  # type: ignore[type-var]
        report.parent = "updated" if report.parent == "unchanged" else report.parent


def _first_key(store: ResultsStore, tid: str) -> list[str]:
    steps = store.history.get(tid) or {}
    keys = sorted({k for rec in steps.values() for k in rec})
    return keys[:1]


def _log_steps(tracker: Tracker, store: ResultsStore, row: dict[str, Any], run_id: str, skip: set[int]) -> None:
    """The trial's step records, with timestamps spread evenly over its run time."""
    steps = sorted((store.history.get(row["trial_id"]) or {}).items())
    start, end = _ms(row.get("start_time")), _ms(row.get("end_time"))
    last = max((s for s, _ in steps), default=0) or 1
    records = []
    for step, rec in steps:
        if step in skip:
            continue
        at = start + (end - start) * step // last if start is not None and end is not None else int(time.time() * 1000)
        records.append(({**rec, "step": step}, at))
    tracker.log_steps(run_id, records)


def _create(
    tracker: Tracker, sweep: ValidatedSweep, store: ResultsStore, row: dict[str, Any], outcome: TrialOutcome
) -> str:
    from apd.sweep.trial import trial_config, trial_tags

    point = _point(row)
    engine = row.get("engine") or store.engine
    run_id = tracker.start_trial(
        point,
        trial_config(sweep, point.params, point.seed),
        trial_tags(sweep, point.params, point.seed, engine),
        start_ms=_ms(row.get("start_time")),
    )
    _log_steps(tracker, store, row, run_id, skip=set())
    tracker.end_trial(run_id, outcome, end_ms=_ms(row.get("end_time")))
    return run_id


# ---------------------------------------------------------------------------------------------
# `apd sync OUT`


def add_sync_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the sweep's output folder")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store to write (default: the sweep's, i.e. its tracking.uri or sqlite:///OUT/mlflow.db)",
    )


def stored_engine(out: Path) -> str:
    from apd.sweep.results import TRIALS_FILE, read_table

    try:
        meta = read_table(out / TRIALS_FILE).schema.metadata or {}
    except Exception:
        return "ray"
    return meta.get(b"apd_engine", b"ray").decode()


def make_tracker(sweep: ValidatedSweep, out: Path, uri: str | None) -> Tracker:
    """The sweep's tracker for `uri` (default: the spec's, else OUT's SQLite file); a bad URI is a
    one-line error."""
    from apd.sweep.tracking import Tracker, default_uri

    uri = uri or sweep.spec.tracking.uri or default_uri(out)
    local = uri.startswith("sqlite:") or "://" not in uri
    root = None
    if local:
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        root = out / "mlartifacts" if db is None or db.resolve().parent == out.resolve() else db.parent / "mlartifacts"
    try:
        return Tracker(uri, sweep.spec.tracking.experiment or sweep.name, artifact_root=root)
    except Exception as e:
        raise ConfigError(f"--tracking-uri {uri}: not an MLflow store ({one_line(e)})") from None


def sync_main(args: argparse.Namespace) -> int:
    from apd.sweep.results import ResultsStore
    from apd.sweep.study import PARENT_RUN_ATTR, UID_ATTR, load_study

    out = Path(args.out).resolve()
    if not (out / SPEC_FILE).is_file():
        raise ConfigError(f"{out}: no {SPEC_FILE}; not a sweep's output folder")
    sweep = load_spec(out / SPEC_FILE)
    tracker = make_tracker(sweep, out, getattr(args, "tracking_uri", None))
    with SweepLock(out):
        _, study = load_study(sweep.name, out)
        uid = study.user_attrs.get(UID_ATTR)
        if uid is None:
            import uuid

            uid = uuid.uuid4().hex
            study.set_user_attr(UID_ATTR, uid)
        store = ResultsStore.load(out, sweep, stored_engine(out))
        if not store.rows:
            raise ConfigError(f"{out}: no trial rows to sync (apd sweep --resume --out {out} rebuilds them)")
        try:
            tracker.open(sweep.name)
            report = sync_runs(tracker, sweep, out, store, str(uid), study.user_attrs.get(PARENT_RUN_ATTR))
        except Exception as e:
            raise ConfigError(f"sync: MLflow at {tracker.uri} failed ({one_line(e)})") from None
        if report.ids_changed:
            store.write()
    running = sum(1 for r in store.rows.values() if r["status"] == "RUNNING")
    note = f"; {running} running trials left for the sweep to settle" if running else ""
    print(f"sync {sweep.name} -> {tracker.uri}: {report.describe()}{note}")
    print(f"MLflow: {ui_hint(tracker, sweep.name)}")
    return 0


def ui_hint(tracker: Tracker, sweep_name: str) -> str:
    """How to see the sweep's trials: the command for a local store, then the page to open."""
    if tracker.uri.startswith("http://") or tracker.uri.startswith("https://"):
        return tracker.uri.rstrip("/") + tracker.ui_url(sweep_name)
    return f"mlflow ui --backend-store-uri {tracker.uri}, then open http://127.0.0.1:5000{tracker.ui_url(sweep_name)}"
