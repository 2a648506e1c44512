"""THE Parquet schema of sweep results, and a store that rewrites both files atomically.

`OUT/trials.parquet`, one row per trial:
  trial_id, sweep, experiment (as the sweep file names it), engine, status
  (COMPLETE|PRUNED|FAILED|DIVERGED|RUNNING), error, seed, setting_id, draw, node, mlflow_run_id,
  recovered (double), recovered_all (bool), start_time, end_time (timestamp[us, UTC]), steps_done
  (int64), and (schema 2) method, target (name), target_spec (JSON of the resolved spec), family
  (the kind of the family that judges the target), n_instances (int64) and experiment_ref (a
  registered experiment's name, or the absolute path of the config YAML: what `apd decompose` takes),
  objective (single objective) or objective.0, objective.1, ... (several),
  param.<dotted key> per swept parameter (typed from the spec), metric.<key> per final metrics.json
  key (bool, int64, double, string, or list<double> for per-instance lists).
`OUT/history.parquet`: trial_id, step (int64), then every step-record key as double.
File metadata: `apd_schema_version`, `apd_sweep`, `apd_engine`, `apd_objectives` (JSON list of
{metric, mode}). Files are written to a temp file and `os.replace`d, so a killed sweep always
leaves complete files holding every trial that had ended (and the running ones as RUNNING).
A file that cannot be read on resume is moved aside (`NAME.corrupt-<time>`), never overwritten,
and its rows are rebuilt from the study and the run folders (`apd.sweep.study.reconcile`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from apd.sweep.spec import CategoricalParam, GridParam, IntParam, ValidatedSweep
from apd.sweep.trial import TrialOutcome, TrialPoint

SCHEMA_VERSION = "2"
"""Version 2 added method, target, target_spec, family, n_instances and experiment_ref."""
TRIALS_FILE = "trials.parquet"
HISTORY_FILE = "history.parquet"
PARAM = "param."
METRIC = "metric."
TIMESTAMP = pa.timestamp("us", tz="UTC")

BASE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("trial_id", pa.string()),
    ("sweep", pa.string()),
    ("experiment", pa.string()),
    ("engine", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("seed", pa.int64()),
    ("setting_id", pa.string()),
    ("draw", pa.int64()),
    ("node", pa.string()),
    ("mlflow_run_id", pa.string()),
    ("recovered", pa.float64()),
    ("recovered_all", pa.bool_()),
    ("start_time", TIMESTAMP),
    ("end_time", TIMESTAMP),
    ("steps_done", pa.int64()),
    ("method", pa.string()),
    ("target", pa.string()),
    ("target_spec", pa.string()),
    ("family", pa.string()),
    ("n_instances", pa.int64()),
    ("experiment_ref", pa.string()),
)
NOT_METRICS = ("status", "steps_done", "error")
"""metrics.json keys that have their own column."""


# ---------------------------------------------------------------------------------------------
# Column types


def param_type(p: Any) -> pa.DataType:
    """Ranges are int64/double; choices take the one type all their values share, else JSON text."""
    if isinstance(p, IntParam):
        return pa.int64()
    if not isinstance(p, CategoricalParam | GridParam):
        return pa.float64()
    return pa.string() if json_param(p) else infer_type(p.values)


def json_param(p: Any) -> bool:
    """Choices of mixed types (e.g. `[null, 0.5, "auto"]`) are stored as JSON text."""
    return isinstance(p, CategoricalParam | GridParam) and not _one_kind(p.values)


def _param_cell(p: Any, value: Any) -> Any:
    if value is None:
        return None
    return json.dumps(value) if json_param(p) else _cell(value, param_type(p))


def _one_kind(values: Iterable[Any]) -> bool:
    kinds = {_kind(v) for v in values if v is not None}
    return len(kinds) <= 1 or kinds == {"int", "float"}


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, list):
        return "list"
    return "str" if isinstance(v, str) else "other"


def infer_type(values: Iterable[Any]) -> pa.DataType:
    """bool, int64, double (ints mixed with floats), list<double>, else string."""
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        return pa.float64()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"list"}:
        return pa.list_(pa.float64())
    return pa.string()


def _cell(value: Any, typ: pa.DataType) -> Any:
    """A Python value in the column's type (lists of bools become doubles; others become JSON)."""
    if value is None:
        return None
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value)
    if pa.types.is_list(typ):
        return [None if x is None else float(x) for x in value]
    if pa.types.is_floating(typ):
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Schemas and tables


def objective_columns(sweep: ValidatedSweep) -> list[str]:
    n = len(sweep.spec.objective)
    return ["objective"] if n == 1 else [f"objective.{i}" for i in range(n)]


def file_metadata(sweep: ValidatedSweep, engine: str) -> dict[str, str]:
    objectives = [o.to_dict() for o in sweep.spec.objective]
    return {
        "apd_schema_version": SCHEMA_VERSION,
        "apd_sweep": sweep.name,
        "apd_engine": engine,
        "apd_objectives": json.dumps(objectives),
    }


def trials_table(sweep: ValidatedSweep, engine: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows are the store's internal dicts: base columns, `params`, `metrics`, `objective` list."""
    fields = [pa.field(n, t) for n, t in BASE_COLUMNS]
    fields += [pa.field(c, pa.float64()) for c in objective_columns(sweep)]
    params = sweep.spec.parameters
    fields += [pa.field(PARAM + k, param_type(p)) for k, p in params.items()]
    metric_keys = sorted({k for r in rows for k in r["metrics"] if k not in NOT_METRICS})
    metric_types = {k: infer_type(r["metrics"].get(k) for r in rows) for k in metric_keys}
    fields += [pa.field(METRIC + k, t) for k, t in metric_types.items()]
    schema = pa.schema(fields, metadata=file_metadata(sweep, engine))
    flat = []
    for r in rows:
        cells = {n: r.get(n) for n, _ in BASE_COLUMNS}
        for col, v in zip(objective_columns(sweep), r.get("objective") or [], strict=False):
            cells[col] = v
        cells |= {PARAM + k: _param_cell(p, r["params"].get(k)) for k, p in params.items()}
        cells |= {METRIC + k: _cell(r["metrics"].get(k), t) for k, t in metric_types.items()}
        flat.append(cells)
    return pa.Table.from_pylist(flat, schema=schema)


def history_table(
    sweep: ValidatedSweep, engine: str, history: Mapping[str, Mapping[int, Mapping[str, float]]]
) -> pa.Table:
    keys = sorted({k for steps in history.values() for rec in steps.values() for k in rec if k != "step"})
    fields = [pa.field("trial_id", pa.string()), pa.field("step", pa.int64())]
    fields += [pa.field(k, pa.float64()) for k in keys]
    schema = pa.schema(fields, metadata=file_metadata(sweep, engine))
    rows = [
        {"trial_id": tid, "step": step, **{k: rec.get(k) for k in keys}}
        for tid, steps in history.items()
        for step, rec in sorted(steps.items())
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def read_table(path: Path) -> pa.Table:
    """Read a results file through one open handle. Given a path, pyarrow opens the file once for the
    footer and again for the pages; a sweep's `write_atomic` between the two opens gives a torn read."""
    with open(path, "rb") as f:
        return pq.read_table(f)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write next to `path`, then rename over it: readers never see a half-written file (and a
    failed write, e.g. a full disk, leaves the previous file and no temp file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_or_move_aside(path: Path, echo: Callable[[str], None]) -> pa.Table | None:
    """The table at `path`; None when there is none, or when it is unreadable (truncated by a
    kill, garbage): then it is renamed `NAME.corrupt-<time>` (kept, never overwritten), with a line
    saying so."""
    if not path.is_file():
        return None
    try:
        return read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, aside)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        echo(f"{path}: unreadable ({first}); moved to {aside.name}, rebuilding it")
        return None


# ---------------------------------------------------------------------------------------------
# The store


class ResultsStore:
    """The driver's table of trials and step history, rewritten to Parquet on every change of state."""

    def __init__(self, out: Path, sweep: ValidatedSweep, engine: str) -> None:
        self.out, self.sweep, self.engine = out, sweep, engine
        self.rows: dict[str, dict[str, Any]] = {}
        self.history: dict[str, dict[int, dict[str, float]]] = {}
        self._targets: dict[str, dict[str, Any]] = {}

    @classmethod
    def load(
        cls, out: Path, sweep: ValidatedSweep, engine: str, *, echo: Callable[[str], None] = print
    ) -> ResultsStore:
        """Continue from the files a previous run of this sweep left (resume). An unreadable file is
        moved aside (`read_or_move_aside`); the study's reconcile rebuilds what it held."""
        store = cls(out, sweep, engine)
        trials = read_or_move_aside(out / TRIALS_FILE, echo)
        for row in trials.to_pylist() if trials is not None else []:
            store.rows[row["trial_id"]] = store._internal(row)
        history = read_or_move_aside(out / HISTORY_FILE, echo)
        for rec in history.to_pylist() if history is not None else []:
            tid, step = rec.pop("trial_id"), int(rec.pop("step"))
            store.history.setdefault(tid, {})[step] = {k: v for k, v in rec.items() if v is not None}
        return store

    def _internal(self, row: dict[str, Any]) -> dict[str, Any]:
        """A Parquet row back in the store's form (params decoded from JSON where they were encoded)."""
        out = {n: row.get(n) for n, _ in BASE_COLUMNS}
        objective = [row.get(c) for c in objective_columns(self.sweep)]
        out["objective"] = None if None in objective else objective
        params = {}
        for k, p in self.sweep.spec.parameters.items():
            v = row.get(PARAM + k)
            if v is not None:
                params[k] = json.loads(v) if json_param(p) else v
        out["params"] = params
        out["metrics"] = {c.removeprefix(METRIC): v for c, v in row.items() if c.startswith(METRIC) and v is not None}
        return out

    def start(self, point: TrialPoint, *, mlflow_run_id: str | None = None) -> None:
        self.rows[point.trial_id] = {
            "trial_id": point.trial_id,
            "sweep": self.sweep.name,
            "experiment": self.sweep.spec.experiment,
            "engine": self.engine,
            "status": "RUNNING",
            "seed": point.seed,
            "setting_id": point.setting_id,
            "draw": point.draw,
            "mlflow_run_id": mlflow_run_id,
            "start_time": now(),
            "steps_done": 0,
            "params": dict(point.params),
            "metrics": {},
            "objective": None,
            **self.target_columns(point),
        }
        self.history.setdefault(point.trial_id, {})

    def target_columns(self, point: TrialPoint) -> dict[str, Any]:
        """Method, target, resolved spec, family and instance count of a trial's config (a file target is
        read once per sweep, never trained), and the experiment as `apd decompose` takes it."""
        from pydantic import ValidationError

        from apd.errors import ApdError
        from apd.targets import describe_target

        try:
            cfg = self.sweep.config(point.params, point.seed)
        except ValidationError:  # an interior point breaking a rule: the trial reports it as FAILED
            return {"experiment_ref": experiment_ref(self.sweep)}
        key = json.dumps(cfg.target.to_dict(), sort_keys=True)
        if key not in self._targets:
            try:
                info = describe_target(cfg.target)
                self._targets[key] = {
                    "target": info.name,
                    "target_spec": info.spec_json,
                    "family": info.family,
                    "n_instances": info.n_instances,
                }
            except ApdError:  # a missing or broken target file: the trial itself reports it
                self._targets[key] = {"target": cfg.target.name or Path(str(cfg.target.path)).stem}
        return {"method": cfg.method, "experiment_ref": experiment_ref(self.sweep), **self._targets[key]}

    def add_step(self, trial_id: str, record: Mapping[str, float], node: str | None = None) -> None:
        row = self.rows[trial_id]
        step = int(record["step"])
        self.history.setdefault(trial_id, {})[step] = {k: v for k, v in record.items() if k != "step"}
        row["steps_done"] = max(int(row.get("steps_done") or 0), step)
        row["node"] = node or row.get("node")

    def end(self, trial_id: str, outcome: TrialOutcome) -> dict[str, Any]:
        row = self.rows[trial_id]
        metrics = outcome.metrics or {}
        row |= {
            "status": outcome.status,
            "error": outcome.error,
            "node": outcome.node or row.get("node"),
            "end_time": now(),
            "steps_done": outcome.steps_done or row.get("steps_done") or 0,
            "metrics": dict(metrics),
            "objective": outcome.objective,
            "recovered": _float(metrics.get("recovered")),
            "recovered_all": metrics.get("recovered_all"),
        }
        return row

    def drop(self, trial_id: str) -> None:
        self.rows.pop(trial_id, None)
        self.history.pop(trial_id, None)

    def finished(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["status"] != "RUNNING"]

    def outcomes(self) -> dict[str, TrialOutcome]:
        """The recorded outcome of every ended trial."""
        return {
            r["trial_id"]: TrialOutcome(
                r["status"], r.get("steps_done") or 0, r["metrics"], r.get("error"), r.get("objective"), r.get("node")
            )
            for r in self.finished()
        }

    def write(self) -> None:
        ordered = [self.rows[k] for k in sorted(self.rows)]
        write_atomic(trials_table(self.sweep, self.engine, ordered), self.out / TRIALS_FILE)
        history = {k: self.history[k] for k in sorted(self.history) if k in self.rows}
        write_atomic(history_table(self.sweep, self.engine, history), self.out / HISTORY_FILE)


def experiment_ref(sweep: ValidatedSweep) -> str:
    """A registered experiment's name, else the absolute path of its config YAML (runnable from anywhere)."""
    registered = not sweep.spec.experiment.endswith((".yaml", ".yml")) and "/" not in sweep.spec.experiment
    return sweep.spec.experiment if registered else str(sweep.experiment_path.resolve())


def now() -> datetime:
    return datetime.now(UTC)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
