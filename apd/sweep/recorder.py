"""The driver's single sink for trial events: Parquet rows, MLflow runs, Optuna attributes, progress.

Both engines call the same four methods.

* Tracking never stops or stalls a sweep: calls are bounded (`tracking.HTTP_DEFAULTS`), and after
  the first failure the recorder prints one warning and stops calling the store for the rest of the
  run (a circuit breaker; `apd sync` replays what it missed from OUT).
* OUT is the record: a failed write there (disk full, read-only) is fatal. It raises `OutputError`,
  and the Ray engine stops the experiment (`fatal`), so a sweep never runs on with nothing saved.
"""

from __future__ import annotations

import functools
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apd.sweep.outdir import OutputError, output_error
from apd.sweep.progress import Progress
from apd.sweep.results import ResultsStore
from apd.sweep.spec import ValidatedSweep
from apd.sweep.study import RUN_ID_ATTR, StudyHandle
from apd.sweep.trial import COUNT_KEYS, TrialOutcome, TrialPoint, one_line, trial_config, trial_tags

if TYPE_CHECKING:  # MLflow loads only when a sweep tracks (a GPU box may not have it)
    from apd.sweep.tracking import Tracker

WRITE_EVERY_S = 10.0
TRIALS_DIR = "trials"
"""OUT/trials/<trial_id>/: the run folder of each finished trial (config, metrics, figures, weights)."""


def short_reason(e: BaseException) -> str:
    """The gist of a tracking failure: MLflow wraps requests' errors in a paragraph."""
    text = one_line(e)
    for needle, gist in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
        ("RemoteDisconnected", "server closed the connection"),
    ):
        if needle in text:
            return gist
    match = re.search(r"\[Errno \d+\] ([^\"')]+)", text)
    return match.group(1).strip() if match else text[:200]


def status_counts(statuses: Mapping[str, int], total: int) -> dict[str, float]:
    """The parent run's metrics: every count, zeros included."""
    counts = {k: 0.0 for k in COUNT_KEYS}
    for status, n in statuses.items():
        counts[f"n_{status.lower()}"] = counts.get(f"n_{status.lower()}", 0.0) + n
    counts["n_done"] = float(sum(n for s, n in statuses.items() if s != "RUNNING"))
    counts["n_trials"] = float(total)
    return counts


class Recorder:
    def __init__(
        self,
        sweep: ValidatedSweep,
        out: Path,
        store: ResultsStore,
        tracker: Tracker | None,
        *,
        engine: str,
        total: int,
        handle: StudyHandle | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.sweep, self.out, self.store, self.tracker = sweep, out, store, tracker
        self.engine, self.total, self.handle = engine, total, handle
        self.progress = progress or Progress(total)
        self.runs: dict[str, str] = {}
        self.started_at: dict[str, float] = {}
        self.tracking_error: str | None = None
        """Why tracking stopped (the circuit breaker tripped), if it did."""
        self.tracking_uri = tracker.uri if tracker is not None else None
        self.fatal: OutputError | None = None
        self._written = 0.0

    @property
    def done(self) -> int:
        return len(self.store.finished())

    def echo(self, text: str, *, err: bool = False) -> None:
        self.progress.echo(text, err=err)

    def trial_dir(self, trial_id: str) -> Path:
        return self.out / TRIALS_DIR / trial_id

    def started(self, *points: TrialPoint) -> None:
        """Trials began, together (the members of a pack: the files show all of them RUNNING at once);
        a trial that began already (a Ray retry) is left as it is."""
        new = [p for p in points if (self.store.rows.get(p.trial_id) or {}).get("status") != "RUNNING"]
        for point in new:
            self.started_at[point.trial_id] = time.monotonic()
            self.progress.started(point.trial_id, self._steps(point))
            config, tags = self._config(point), self._tags(point)
            run_id = self.track("start_trial", functools.partial(_start_trial, point=point, config=config, tags=tags))
            if run_id is not None:
                self.runs[point.trial_id] = run_id
                if self.handle is not None:
                    self.handle.set_trial_attr(point.number, RUN_ID_ATTR, run_id)
            self.store.start(point, mlflow_run_id=run_id)
        if new:
            self._write()

    def step(self, trial_id: str, record: Mapping[str, float], node: str | None = None) -> None:
        if trial_id not in self.store.rows:
            return
        first = not self.store.history.get(trial_id)
        self.store.add_step(trial_id, record, node)
        self.progress.step(trial_id, int(record["step"]))
        # the files also show where running trials are and how far they got: rewrite on a trial's
        # first record (its node is known) and otherwise at most every WRITE_EVERY_S seconds
        if first or time.monotonic() - self._written > WRITE_EVERY_S:
            self._write()
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.track("log_step", lambda t: t.log_step(run_id, record))

    def ended(self, trial_id: str, outcome: TrialOutcome) -> None:
        """A trial finished, failed or was pruned (once; repeats are ignored)."""
        row = self.store.rows.get(trial_id)
        if row is None or row["status"] != "RUNNING":
            return
        self.store.end(trial_id, outcome)
        self.progress.ended(trial_id, outcome.status)
        self._write()
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.track("end_trial", lambda t: t.end_trial(run_id, outcome))
            self.track("log_counts", lambda t: t.log_counts(self.counts()))
        self.echo(self._line(trial_id, outcome))

    def artifacts(self, trial_id: str, src: Path) -> None:
        """Keep the trial's run folder in OUT/trials/<id> and upload it to its MLflow run."""
        dest = self.trial_dir(trial_id)
        if src.resolve() != dest.resolve():
            try:
                shutil.copytree(src, dest, dirs_exist_ok=True)
            except OSError as e:
                self._fail(dest, e)
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.track("log_artifacts", lambda t: t.log_artifacts(run_id, dest))

    def counts(self) -> dict[str, float]:
        return status_counts(Counter(r["status"] for r in self.store.rows.values()), self.total)

    # -- helpers

    def _write(self) -> None:
        try:
            self.store.write()
        except OSError as e:
            self._fail(self.out / "trials.parquet", e)
        self._written = time.monotonic()

    def _fail(self, path: Path, e: OSError) -> None:
        error = output_error(getattr(e, "filename", None) or path, e)
        self.fatal = self.fatal or error
        raise error from None

    def _steps(self, point: TrialPoint) -> int | None:
        try:
            return int(self.sweep.config(point.params, point.seed).steps)
        except Exception:
            return None

    def _config(self, point: TrialPoint) -> dict[str, Any]:
        return trial_config(self.sweep, point.params, point.seed)

    def _tags(self, point: TrialPoint) -> dict[str, str]:
        return trial_tags(self.sweep, point.params, point.seed, self.engine)

    def track(self, what: str, fn: Callable[[Tracker], Any]) -> Any:
        """Call the tracker; its first failure switches tracking off for the rest of the run."""
        if self.tracker is None:
            return None
        try:
            return fn(self.tracker)
        except Exception as e:
            uri, self.tracker = self.tracker.uri, None
            self.tracking_error = f"{what}: {short_reason(e)}"
            self.progress.echo(
                f"warning: MLflow ({uri}) failed at {what} ({short_reason(e)}); tracking is off for the rest "
                f"of this run, results go on to Parquet (replay later: apd sync {self.out})",
                err=True,
            )
            return None

    def _line(self, trial_id: str, outcome: TrialOutcome) -> str:
        parts = [f"[{self.done}/{self.total}] trial {trial_id} {outcome.status}"]
        keys = [o.metric for o in self.sweep.spec.objective] + ["recovered"]
        for k in dict.fromkeys(keys):
            v = outcome.metrics.get(k)
            if isinstance(v, bool | int | float):
                parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        if outcome.status == "PRUNED":
            parts.append(f"at step {self.store.rows[trial_id].get('steps_done')}")
        if outcome.error:
            parts.append(f"({outcome.error})")
        started = self.started_at.get(trial_id)
        if started is not None:
            parts.append(f"[{time.monotonic() - started:.1f} s]")
        return " ".join(parts)


def _start_trial(tracker: Tracker, *, point: TrialPoint, config: dict[str, Any], tags: dict[str, str]) -> str:
    return tracker.start_trial(point, config, tags)
