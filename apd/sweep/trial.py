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
from apd.sweep.spec import Objective, ValidatedSweep, corner_points, format_sweep_error

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


def run_pack_trial(
    ctx: TrialContext,
    points: Sequence[TrialPoint],
    out_dirs: Mapping[str, Path] | None,
    *,
    on_step: Callable[[dict[str, dict[str, float]]], None] | None = None,
    on_end: Callable[[str, TrialOutcome], None] | None = None,
    checkpoint_path: Path | None = None,
    node: str | None = None,
) -> dict[str, TrialOutcome]:
    """Decompose the points as one pack (`apd.pack`): each member reports and ends as its own trial
    (`on_step({trial_id: record})` per record step, `on_end(trial_id, outcome)`), a diverged one mid-run. Returns the
    outcome of every point the pack ran (after a resume: those still running at the checkpoint),
    and of any whose config is invalid. Never raises `Exception`: a failed pack fails its members."""
    from apd.run import RunResult, run_pack

    os.environ.update(ctx.env)
    outcomes: dict[str, TrialOutcome] = {}

    def end(tid: str, outcome: TrialOutcome) -> None:
        outcomes[tid] = outcome
        if on_end is not None:
            on_end(tid, outcome)

    members, cfgs = [], []
    for point in points:
        try:
            cfgs.append(ctx.config(point))
            members.append(point)
        except ValidationError as e:
            end(point.trial_id, TrialOutcome("FAILED", error=format_sweep_error(e, "config"), node=node))
    if not members:
        return outcomes

    def member_end(j: int, result: RunResult) -> None:
        objectives = ctx.sweep.spec.objective
        end(
            members[j].trial_id,
            judge_run(result.status, result.steps_done, result.metrics, result.error, objectives, node),
        )

    def member_steps(records: Mapping[int, Any]) -> None:
        if on_step is not None:
            on_step({members[j].trial_id: step_dict(r.as_dict()) for j, r in records.items()})

    try:
        run_pack(
            cfgs,
            [out_dirs[p.trial_id] for p in members] if out_dirs is not None else None,
            on_step=member_steps,
            on_end=member_end,
            checkpoint_path=checkpoint_path,
            checkpoint_every=ctx.sweep.spec.checkpoint_every,
            progress=False,
        )
    except Exception as e:
        for point in members:
            if point.trial_id not in outcomes:
                end(point.trial_id, TrialOutcome("FAILED", error=one_line(e), node=node))
    return outcomes


def resolve_pack(sweep: ValidatedSweep, remaining: int) -> int:
    """The sweep's pack size here: `pack`, or for `auto` what `apd.pack.measure_pack_size` finds on
    this process's device (1 when the sweep prunes), never more than the trials left to run."""
    from apd.pack import measure_pack_size

    pack = sweep.spec.pack
    if pack == "auto":
        if sweep.spec.pruning.algorithm != "none":
            return 1
        point = next(iter(corner_points(sweep.spec.parameters)))
        pack = measure_pack_size(sweep.config(point, sweep.spec.seeds[0]))
    return max(1, min(pack, remaining))


COUNT_KEYS = ("n_complete", "n_pruned", "n_failed", "n_diverged", "n_running", "n_done", "n_trials")
"""A sweep's status counts: the MLflow parent run's metrics (all of them, zeros included)."""


def trial_config(sweep: ValidatedSweep, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A trial's resolved config, logged as its parameters (the raw dict if it does not validate)."""
    try:
        return sweep.config(params, seed).to_dict()
    except ValueError:  # pydantic's ValidationError: an interior point broke a rule
        return sweep.config_dict(params, seed)


def trial_tags(sweep: ValidatedSweep, params: Mapping[str, Any], seed: int, engine: str) -> dict[str, str]:
    target = sweep.config_dict(params, seed).get("target") or {}
    return {
        "apd.sweep": sweep.name,
        "apd.experiment": sweep.spec.experiment,
        "apd.target": str(target.get("name") or target.get("path")),
        "apd.engine": engine,
    }
