"""MLflow tracking, driver side only: one parent run per sweep, one nested child run per trial.

The driver is the only writer: no MLflow in workers, no SQLite race between them (the default
store, `sqlite:///OUT/mlflow.db`, is created here before any trial starts), and the same code
serves a local SQLite file and an `mlflow server` over HTTP.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from apd.sweep.trial import TrialOutcome, TrialPoint

PARENT_TAG = "mlflow.parentRunId"
GIT_TAG = "mlflow.source.git.commit"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED", "DIVERGED": "FAILED"}
"""Trial status -> MLflow run status."""
MAX_PARAM_LEN = 6000  # MLflow rejects longer param values


def default_uri(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'mlflow.db'}"


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one (read-only git call)."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (`{"target": {"seed": 0}}` -> `{"target.seed": 0}`)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def _ms() -> int:
    return int(time.time() * 1000)


def _metric_value(v: Any) -> float | None:
    """Numbers and bools as floats; lists, strings and non-finite values are not logged."""
    if isinstance(v, bool | int | float) and math.isfinite(float(v)):
        return float(v)
    return None


class Tracker:
    """Writes one sweep's runs; every method may raise (the recorder decides what a failure costs)."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: Path | None = None) -> None:
        self.uri, self.experiment = uri, experiment
        for name in ("mlflow", "alembic"):  # a new SQLite store logs its migrations at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # an absolute artifact location, or artifacts land in the driver's ./mlruns
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        self.parent_id: str | None = None
        self.commit = git_commit()
        self.curves: dict[str, set[str]] = {}
        """Keys logged as step curves per run: their final value is the curve's last point."""

    # -- the sweep (parent run)

    def start_sweep(self, name: str, engine: str, spec: Mapping[str, Any], parent_id: str | None = None) -> str:
        """Open the parent run, or reopen `parent_id` when resuming."""
        if parent_id is not None:
            self.client.update_run(parent_id, status="RUNNING")
            self.parent_id = parent_id
            return parent_id
        tags = {"apd.kind": "sweep", "apd.sweep": name, "apd.engine": engine}
        if self.commit:
            tags[GIT_TAG] = self.commit
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(spec).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.parent_id, params=params[i : i + 100])
        return self.parent_id

    def log_sweep_file(self, path: Path) -> None:
        assert self.parent_id is not None
        self.client.log_artifact(self.parent_id, str(path))

    def end_sweep(self, status: str, counts: Mapping[str, float]) -> None:
        assert self.parent_id is not None
        metrics = [Metric(k, float(v), _ms(), 0) for k, v in counts.items() if _metric_value(v) is not None]
        self.client.log_batch(self.parent_id, metrics=metrics)
        self.client.set_terminated(self.parent_id, status)

    def settle_children(self, ended: Mapping[str, TrialOutcome]) -> int:
        """Children a killed driver left RUNNING: finish those whose trial had ended (the driver died
        between the Parquet row and MLflow), mark the others KILLED and interrupted; count those."""
        assert self.parent_id is not None
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and attributes.status = 'RUNNING'"
        interrupted = 0
        for run in self.client.search_runs([self.experiment_id], filter_string=query):
            outcome = ended.get(run.data.tags.get("apd.trial_id", ""))
            if outcome is not None:
                self.end_trial(run.info.run_id, outcome)
                continue
            interrupted += 1
            self.client.set_tag(run.info.run_id, "apd.interrupted", "true")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return interrupted

    # -- trials (child runs)

    def start_trial(self, point: TrialPoint, config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        assert self.parent_id is not None
        all_tags = {
            PARENT_TAG: self.parent_id,
            "apd.trial_id": point.trial_id,
            "apd.setting_id": point.setting_id,
            "apd.seed": str(point.seed),
            **tags,
        }
        if self.commit:
            all_tags[GIT_TAG] = self.commit
        run = self.client.create_run(self.experiment_id, run_name=point.trial_id, tags=all_tags)
        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        params.append(Param("apd.swept", ",".join(point.params) or "-"))
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return str(run.info.run_id)

    def log_step(self, run_id: str, record: Mapping[str, float]) -> None:
        step, ts = int(record["step"]), _ms()
        metrics = [
            Metric(k, x, ts, step) for k, v in record.items() if k != "step" and (x := _metric_value(v)) is not None
        ]
        self.curves.setdefault(run_id, set()).update(m.key for m in metrics)
        self.client.log_batch(run_id, metrics=metrics)

    def end_trial(self, run_id: str, outcome: TrialOutcome) -> None:
        ts = _ms()
        metrics = [
            Metric(k, x, ts, outcome.steps_done)
            for k, v in outcome.metrics.items()
            # the losses already have their curve (the last record is the final value)
            if k not in self.curves.get(run_id, ()) and k != "steps_done" and (x := _metric_value(v)) is not None
        ]
        for i, v in enumerate(outcome.objective or []):
            metrics.append(Metric("objective" if len(outcome.objective or []) == 1 else f"objective.{i}", v, ts, 0))
        tags = [RunTag("apd.status", outcome.status)]
        if outcome.status == "PRUNED":
            tags.append(RunTag("pruned", "true"))
        if outcome.error:
            tags.append(RunTag("apd.error", outcome.error[:5000]))
        if "recovered_all" in outcome.metrics:
            tags.append(RunTag("apd.recovered", str(bool(outcome.metrics["recovered_all"])).lower()))
        if outcome.node:
            tags.append(RunTag("apd.node", outcome.node))
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000], tags=tags if i == 0 else ())
        self.client.set_terminated(run_id, RUN_STATUS[outcome.status])

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        self.client.log_artifacts(run_id, str(directory))


def is_terminal(status: str) -> bool:
    return RunStatus.is_terminated(RunStatus.from_string(status))
