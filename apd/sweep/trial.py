"""The trial function both engines run: build the point's config, decompose, judge, score.

It imports neither Ray nor Optuna nor MLflow, so it runs unchanged in a Ray worker or in-process.
Faults of the run itself (an exception, a diverged loss, a missing objective) become a FAILED or
DIVERGED outcome with a one-line reason, so one bad trial never stops a sweep.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from apd.config import DecomposeConfig
from apd.sweep.spec import Objective, ValidatedSweep, format_sweep_error

Status = Literal["COMPLETE", "PRUNED", "FAILED", "DIVERGED", "RUNNING"]
FINISHED: tuple[Status, ...] = ("COMPLETE", "PRUNED", "FAILED", "DIVERGED")
FORWARDED_ENV = ("APD_CACHE_DIR",)
"""Driver environment the workers need (where trained targets are cached)."""
HISTORY_FILE = "history.jsonl"
"""The run folder's step records, one JSON object a line (what rebuilds history.parquet if lost)."""


def trial_id_of(number: int) -> str:
    """Stable across engines and resumes: derived from the Optuna trial number."""
    return f"t{number:04d}"


@dataclass(frozen=True)
class TrialPoint:
    """What the search chose for one trial."""

    number: int
    trial_id: str
    seed: int
    draw: int
    """Number of the trial whose draw this replicates (itself for a fresh draw)."""
    setting_id: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialPoint:
        keys = ("number", "trial_id", "seed", "draw", "setting_id")
        return cls(**{k: data[k] for k in keys}, params=dict(data["params"]))


@dataclass
class TrialOutcome:
    """How a trial ended, with its final metrics (empty when it did not finish its steps)."""

    status: Status
    steps_done: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    objective: list[float] | None = None
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialOutcome:
        return cls(
            status=data["status"],
            steps_done=int(data.get("steps_done") or 0),
            metrics=dict(data.get("metrics") or {}),
            error=data.get("error"),
            objective=data.get("objective"),
            node=data.get("node"),
        )


@dataclass(frozen=True)
class TrialContext:
    """Everything a worker needs besides the point; pickled once per Ray trial."""

    sweep: ValidatedSweep
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_driver(cls, sweep: ValidatedSweep) -> TrialContext:
        return cls(sweep, {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})

    def config(self, point: TrialPoint) -> DecomposeConfig:
        return self.sweep.config(point.params, point.seed)


def run_trial(
    ctx: TrialContext,
    point: TrialPoint,
    out_dir: Path | None,
    *,
    on_step: Callable[[dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: Path | None = None,
    node: str | None = None,
) -> TrialOutcome:
    """Decompose one point. Returns COMPLETE, PRUNED (stopped), DIVERGED or FAILED; never raises
    `Exception` (Ray's stop signal, a `BaseException`, passes through)."""
    from apd.run import run_decomposition

    os.environ.update(ctx.env)
    try:
        cfg = ctx.config(point)
    except ValidationError as e:  # an interior point can break a rule its validated corners kept
        return TrialOutcome("FAILED", error=format_sweep_error(e, "config"), node=node)

    records: list[dict[str, float]] = []

    def step_hook(record: Any) -> None:
        records.append(step_dict(record.as_dict()))
        if on_step is not None:
            on_step(records[-1])

    try:
        result = run_decomposition(
            cfg,
            out_dir,
            on_step=step_hook,
            should_stop=should_stop,
            checkpoint_path=checkpoint_path,
            checkpoint_every=ctx.sweep.spec.checkpoint_every,
            progress=False,
        )
    except Exception as e:
        return TrialOutcome("FAILED", error=one_line(e), node=node)
    if out_dir is not None and out_dir.is_dir():
        # a run resumed from a checkpoint (Ray retry) holds only the records since then
        (out_dir / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return judge_run(result.status, result.steps_done, result.metrics, result.error, ctx.sweep.spec.objective, node)


def judge_run(
    status: str,
    steps_done: int,
    metrics: dict[str, Any],
    error: str | None,
    objectives: Sequence[Objective],
    node: str | None = None,
) -> TrialOutcome:
    """Map a RunResult to an outcome; a finished run without a finite objective is FAILED."""
    if status == "stopped":
        return TrialOutcome("PRUNED", steps_done, {}, None, None, node)
    if status == "diverged":
        return TrialOutcome("DIVERGED", steps_done, metrics, error or "diverged", None, node)
    values, problem = objective_values(objectives, metrics)
    if problem is not None:
        return TrialOutcome("FAILED", steps_done, metrics, problem, None, node)
    return TrialOutcome("COMPLETE", steps_done, metrics, None, values, node)


def objective_values(objectives: Sequence[Objective], metrics: Mapping[str, Any]) -> tuple[list[float], str | None]:
    values = []
    for obj in objectives:
        v = metrics.get(obj.metric)
        if not isinstance(v, int | float):
            return [], f"objective metric {obj.metric!r} is missing from the run's metrics"
        if not math.isfinite(float(v)):
            return [], f"objective metric {obj.metric!r} is {v}"
        values.append(float(v))
    return values, None


def step_dict(record: Mapping[str, Any]) -> dict[str, float]:
    """A StepRecord as plain floats, with an int step."""
    out = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
    out["step"] = int(record["step"])
    return out


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
