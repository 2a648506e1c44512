"""MLflow tracking, driver side only: one parent run per sweep, one nested child run per trial.

The driver is the only writer: no MLflow in workers, no SQLite race between them (the default
store, `sqlite:///OUT/mlflow.db`, is created here before any trial starts), and the same code
serves a local SQLite file and an `mlflow server` over HTTP.

Over HTTP every call is bounded (`HTTP_DEFAULTS`: MLflow's own timeout and retry settings, which
otherwise retry a dead server for about 4 minutes per call). The recorder stops calling a store
after its first failure; `apd sync` replays what it missed from OUT.

Experiments are created as model-training experiments (`mlflow.experimentKind`), with a note on
how to read them and a saved runs-table view (`mlflow.sharedViewState.<key>`: this sweep's trials,
ranked by the objective, with the objective, recovery and swept parameters as columns), which the
URL from `ui_url` opens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from apd.sweep.spec import ValidatedSweep
from apd.sweep.trial import TrialOutcome, TrialPoint

PARENT_TAG = "mlflow.parentRunId"
GIT_TAG = "mlflow.source.git.commit"
KIND_TAG = "apd.kind"
UID_TAG = "apd.sweep_uid"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""What MLflow 3's UI reads to open an experiment on its runs (not its GenAI traces)."""
NOTE_TAG = "mlflow.note.content"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED", "DIVERGED": "FAILED"}
"""Trial status -> MLflow run status."""
MAX_PARAM_LEN = 6000  # MLflow rejects longer param values
HTTP_DEFAULTS = {
    # MLflow's defaults (120 s timeout, 7 retries with backoff) stall a sweep ~4 minutes per call
    # to a dead server; these bound a call to about a minute against a hung one (seconds against a
    # refused one). Values already in the environment win.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # else every finished run over HTTP costs one more call and prints two "View run" lines
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
NOTE = """\
**apd sweep {name}**: one parent run (`apd.kind = sweep`) with the status counts; one nested child
run per trial (`apd.kind = trial`, named by its trial id) with the whole decomposition config as
parameters, step curves of every loss, final metrics (`objective`, `mmcs`, `recovered`, ...) and
the run folder as artifacts.

* Trials as a table: Runs tab, expand the parent run, or filter ``tags.`apd.kind` = 'trial'``;
  *Columns* adds metrics and parameters.
* Curves: select trials, then the *Chart* view (x axis: step).
* Seeds of one setting share the tag `apd.setting_id` (*Group by* it).
"""


def http_defaults() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


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


def ms(t: float | None = None) -> int:
    return int((time.time() if t is None else t) * 1000)


def _metric_value(v: Any) -> float | None:
    """Numbers and bools as floats; lists, strings and non-finite values are not logged."""
    if isinstance(v, bool | int | float) and math.isfinite(float(v)):
        return float(v)
    return None


def objective_keys(n: int) -> list[str]:
    return ["objective"] if n == 1 else [f"objective.{i}" for i in range(n)]


def share_key(sweep_name: str) -> str:
    return "apd-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", sweep_name).strip("-") or "sweep")


def trials_view(sweep: ValidatedSweep) -> dict[str, Any]:
    """The saved runs-table view of one sweep's trials (the UI's shared-view format)."""
    spec = sweep.spec
    filt = "tags.`apd.kind` = 'trial'"
    if "'" not in sweep.name:
        filt = f"tags.`apd.sweep` = '{sweep.name}' and " + filt
    objectives = objective_keys(len(spec.objective))
    metrics = [*objectives, *(o.metric for o in spec.objective), "recovered", "identity_error"]
    columns = [f"metrics.`{k}`" for k in dict.fromkeys(metrics)]
    columns += [f"params.`{k}`" for k in list(spec.parameters)[:20]]
    columns += ["tags.`apd.status`", "tags.`apd.seed`", "tags.`apd.setting_id`"]
    return {
        "searchFilter": filt,
        "orderByKey": f"metrics.`{objectives[0]}`",
        "orderByAsc": spec.objective[0].mode == "min",
        "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL",  # charts show every trial, not the first 10
    }


class Tracker:
    """Writes one sweep's runs; every method may raise (the recorder decides what a failure costs).

    Creating it only parses the URI (a bad one raises); `open` is the first call to the store."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: Path | None = None) -> None:
        http_defaults()
        self.uri, self.experiment = uri, experiment
        for name in ("mlflow", "alembic"):  # a new SQLite store logs its migrations at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(uri)
        self.artifact_root = artifact_root
        self.experiment_id = ""
        self.parent_id: str | None = None
        self.commit = git_commit()
        self.curves: dict[str, set[str]] = {}
        """Keys logged as step curves per run: their final value is the curve's last point."""

    def open(self, sweep_name: str) -> str:
        """Find or create the experiment (a model-training one); returns its id."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
            if EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        else:
            # an absolute artifact location, or artifacts land in the driver's ./mlruns
            root = self.artifact_root
            location = root.resolve().as_uri() if root is not None else None
            tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: NOTE.format(name=sweep_name)}
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location, tags=tags)
        return self.experiment_id

    def share_view(self, sweep: ValidatedSweep) -> None:
        self.client.set_experiment_tag(
            self.experiment_id, SHARED_VIEW_TAG + share_key(sweep.name), json.dumps(trials_view(sweep))
        )

    def ui_url(self, sweep_name: str) -> str:
        """The path (after the server's address) of this sweep's trials table in the MLflow UI."""
        key = quote(share_key(sweep_name))
        return f"/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"

    # -- the sweep (parent run)

    def start_sweep(
        self, name: str, engine: str, spec: Mapping[str, Any], uid: str, *, start_ms: int | None = None
    ) -> str:
        tags = {KIND_TAG: "sweep", "apd.sweep": name, "apd.engine": engine, UID_TAG: uid}
        if self.commit:
            tags[GIT_TAG] = self.commit
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(spec).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.parent_id, params=params[i : i + 100])
        return self.parent_id

    def find_sweep(self, uid: str, known_id: str | None = None) -> Run | None:
        """The sweep's parent run in this store: the one tagged with `uid`, else `known_id` (the
        parent a sweep from before the tag recorded in its study), which then gets the tag."""
        query = f"tags.`{KIND_TAG}` = 'sweep' and tags.`{UID_TAG}` = '{uid}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        run = runs[0] if runs else None
        if run is None and known_id is not None:
            try:
                run = self.client.get_run(known_id)
            except MlflowException:  # not in this store
                return None
            if run.info.experiment_id != self.experiment_id or run.data.tags.get(KIND_TAG) != "sweep":
                return None
            self.client.set_tag(known_id, UID_TAG, uid)
        if run is not None:
            self.parent_id = run.info.run_id
        return run

    def reopen_sweep(self) -> None:
        assert self.parent_id is not None
        self.client.update_run(self.parent_id, status="RUNNING")

    def log_sweep_file(self, path: Path) -> None:
        assert self.parent_id is not None
        self.client.log_artifact(self.parent_id, str(path))

    def log_counts(self, counts: Mapping[str, float]) -> None:
        assert self.parent_id is not None
        ts = ms()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in counts.items()])

    def end_sweep(self, status: str, counts: Mapping[str, float], *, end_ms: int | None = None) -> None:
        assert self.parent_id is not None
        self.log_counts(counts)
        self.client.set_terminated(self.parent_id, status, end_time=end_ms)

    def children(self) -> dict[str, Run]:
        """This sweep's trial runs by trial id."""
        assert self.parent_id is not None
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}'"
        found: dict[str, Run] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                found.setdefault(run.data.tags.get("apd.trial_id", run.info.run_name or ""), run)
            token = page.token
            if not token:
                return found

    def mark_interrupted(self, run_id: str) -> None:
        self.client.set_tag(run_id, "apd.interrupted", "true")
        self.client.set_terminated(run_id, "KILLED")

    # -- trials (child runs)

    def start_trial(
        self,
        point: TrialPoint,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
        *,
        start_ms: int | None = None,
    ) -> str:
        assert self.parent_id is not None
        all_tags = {
            PARENT_TAG: self.parent_id,
            KIND_TAG: "trial",
            "apd.trial_id": point.trial_id,
            "apd.setting_id": point.setting_id,
            "apd.seed": str(point.seed),
            **tags,
        }
        if self.commit:
            all_tags[GIT_TAG] = self.commit
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=point.trial_id, tags=all_tags)
        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        params.append(Param("apd.swept", ",".join(point.params) or "-"))
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return str(run.info.run_id)

    def log_step(self, run_id: str, record: Mapping[str, float], *, at_ms: int | None = None) -> None:
        self.log_steps(run_id, [(record, ms() if at_ms is None else at_ms)])

    def log_steps(self, run_id: str, records: Sequence[tuple[Mapping[str, float], int]]) -> None:
        metrics = [
            Metric(k, x, ts, int(record["step"]))
            for record, ts in records
            for k, v in record.items()
            if k != "step" and (x := _metric_value(v)) is not None
        ]
        self.curves.setdefault(run_id, set()).update(m.key for m in metrics)
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def end_trial(self, run_id: str, outcome: TrialOutcome, *, end_ms: int | None = None) -> None:
        """Final values at step 0 (they read as values, not as one-point curves), tags, status."""
        ts = ms() if end_ms is None else end_ms
        metrics = [
            Metric(k, x, ts, 0)
            for k, v in outcome.metrics.items()
            # the losses already have their curve (the last record is the final value)
            if k not in self.curves.get(run_id, ()) and k != "steps_done" and (x := _metric_value(v)) is not None
        ]
        objective = outcome.objective or []
        metrics += [Metric(k, v, ts, 0) for k, v in zip(objective_keys(len(objective)), objective, strict=True)]
        metrics.append(Metric("steps_done", float(outcome.steps_done), ts, 0))
        tags = [RunTag("apd.status", outcome.status)]
        if outcome.status == "PRUNED":
            tags.append(RunTag("pruned", "true"))
        if outcome.error:
            tags.append(RunTag("apd.error", outcome.error[:5000]))
        if "recovered_all" in outcome.metrics:
            tags.append(RunTag("apd.recovered", str(bool(outcome.metrics["recovered_all"])).lower()))
        if outcome.node:
            tags.append(RunTag("apd.node", outcome.node))
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000], tags=tags if i == 0 else ())
        self.client.set_terminated(run_id, RUN_STATUS[outcome.status], end_time=end_ms)

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        self.client.log_artifacts(run_id, str(directory))

    def artifact_paths(self, run_id: str, path: str | None = None) -> set[str]:
        """Every file the run holds as an artifact (relative paths)."""
        found: set[str] = set()
        for info in self.client.list_artifacts(run_id, path):
            found |= self.artifact_paths(run_id, info.path) if info.is_dir else {info.path}
        return found

    def lacks_artifacts(self, run_id: str, directory: Path) -> bool:
        """Whether some file of `directory` is not among the run's artifacts (an upload cut short)."""
        local = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        return bool(local - self.artifact_paths(run_id))

    def logged_steps(self, run_id: str, keys: Iterator[str] | Sequence[str]) -> set[int]:
        """Steps at which every one of `keys` was logged already (what a replay can skip)."""
        steps: set[int] | None = None
        for key in keys:
            have = {m.step for m in self.client.get_metric_history(run_id, key)}
            steps = have if steps is None else steps & have
        return steps or set()


def is_terminal(status: str) -> bool:
    return RunStatus.is_terminated(RunStatus.from_string(status))
