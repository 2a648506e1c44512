"""The driver's single sink for trial events: Parquet rows, MLflow runs and the progress lines.

Both engines call the same four methods. Tracking failures are reported once and never stop the
sweep (inside Ray, an exception in a callback would abort `fit()`); Parquet failures do raise.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apd.sweep.results import ResultsStore
from apd.sweep.spec import ValidatedSweep
from apd.sweep.trial import TrialOutcome, TrialPoint

if TYPE_CHECKING:  # MLflow loads only when a sweep tracks (a GPU box may not have it)
    from apd.sweep.tracking import Tracker

WRITE_EVERY_S = 10.0
TRIALS_DIR = "trials"
"""OUT/trials/<trial_id>/: the run folder of each finished trial (config, metrics, figures, weights)."""


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
        echo: Callable[[str], None] = print,
    ) -> None:
        self.sweep, self.out, self.store, self.tracker = sweep, out, store, tracker
        self.engine, self.total, self.echo = engine, total, echo
        self.runs: dict[str, str] = {}
        self.started_at: dict[str, float] = {}
        self._warned: set[str] = set()
        self._written = 0.0

    @property
    def done(self) -> int:
        return len(self.store.finished())

    def trial_dir(self, trial_id: str) -> Path:
        return self.out / TRIALS_DIR / trial_id

    def started(self, point: TrialPoint) -> None:
        """A trial began (again, after a Ray retry: then nothing changes)."""
        row = self.store.rows.get(point.trial_id)
        if row is not None and row["status"] == "RUNNING":
            return
        self.started_at[point.trial_id] = time.monotonic()
        run_id = self.track("start_trial", lambda t: t.start_trial(point, self._config(point), self._tags(point)))
        if run_id is not None:
            self.runs[point.trial_id] = run_id
        self.store.start(point, mlflow_run_id=run_id)
        self._write()

    def step(self, trial_id: str, record: Mapping[str, float], node: str | None = None) -> None:
        if trial_id not in self.store.rows:
            return
        first = not self.store.history.get(trial_id)
        self.store.add_step(trial_id, record, node)
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
        self._write()
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.track("end_trial", lambda t: t.end_trial(run_id, outcome))
        self.echo(self._line(trial_id, outcome))

    def artifacts(self, trial_id: str, src: Path) -> None:
        """Keep the trial's run folder in OUT/trials/<id> and upload it to its MLflow run."""
        dest = self.trial_dir(trial_id)
        if src.resolve() != dest.resolve():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.track("log_artifacts", lambda t: t.log_artifacts(run_id, dest))

    # -- helpers

    def _write(self) -> None:
        self.store.write()
        self._written = time.monotonic()

    def _config(self, point: TrialPoint) -> dict[str, Any]:
        return self.sweep.config(point.params, point.seed).to_dict()

    def _tags(self, point: TrialPoint) -> dict[str, str]:
        cfg = self.sweep.config(point.params, point.seed)
        return {
            "apd.sweep": self.sweep.name,
            "apd.experiment": self.sweep.spec.experiment,
            "apd.target": cfg.target.name or str(cfg.target.path),
            "apd.engine": self.engine,
        }

    def track(self, what: str, fn: Callable[[Tracker], Any]) -> Any:
        if self.tracker is None:
            return None
        try:
            return fn(self.tracker)
        except Exception as e:
            if what not in self._warned:
                self._warned.add(what)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"warning: mlflow {what} failed ({first}); the sweep goes on", file=sys.stderr)
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
