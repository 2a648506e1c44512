"""The inline engine: the same trial function, one trial at a time, under plain Optuna in-process.

No daemons and no start-up cost; pruning comes from Optuna's successive-halving pruner (the
asynchronous rule ASHA uses) fed the pruning metric at every report.
"""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import torch

from apd.sweep.recorder import Recorder
from apd.sweep.space import intermediate_value, make_pruner, make_sampler, make_space
from apd.sweep.spec import ValidatedSweep
from apd.sweep.study import StudyHandle
from apd.sweep.trial import TrialContext, TrialOutcome, TrialPoint, run_trial

STATES = {
    "COMPLETE": optuna.trial.TrialState.COMPLETE,
    "PRUNED": optuna.trial.TrialState.PRUNED,
    "FAILED": optuna.trial.TrialState.FAIL,
    "DIVERGED": optuna.trial.TrialState.FAIL,
}


def run_inline(
    sweep: ValidatedSweep, out: Path, handle: StudyHandle, recorder: Recorder, ctx: TrialContext, remaining: int
) -> None:
    """Ask, run, record, tell: `remaining` times. The row is written before Optuna is told, so a
    killed driver leaves at worst a RUNNING Optuna trial that resume settles from the row."""
    torch.set_num_threads(max(1, int(sweep.spec.resources.cpus)))  # Ray would set OMP_NUM_THREADS
    study = optuna.load_study(
        study_name=handle.name,
        storage=handle.storage,
        sampler=make_sampler(sweep, handle.attempt),
        pruner=make_pruner(sweep),
    )
    space = make_space(sweep)
    node = socket.gethostname()
    for _ in range(remaining):
        trial = study.ask()
        point = TrialPoint.from_dict(space(trial)["apd"])
        recorder.started(point)
        outcome = _run(sweep, ctx, trial, point, recorder, node)
        recorder.ended(point.trial_id, outcome)
        run_dir = recorder.trial_dir(point.trial_id)
        if run_dir.is_dir():
            recorder.artifacts(point.trial_id, run_dir)
        values = outcome.objective if outcome.status == "COMPLETE" else None
        study.tell(trial, values, state=STATES[outcome.status])


def _run(
    sweep: ValidatedSweep, ctx: TrialContext, trial: optuna.Trial, point: TrialPoint, recorder: Recorder, node: str
) -> TrialOutcome:
    prune = sweep.spec.pruning.algorithm != "none"
    pruned = [False]

    def on_step(record: dict[str, float]) -> None:
        recorder.step(point.trial_id, record, node)
        value = intermediate_value(sweep, record)
        if value is not None:
            trial.report(value, int(record["step"]))
            pruned[0] = pruned[0] or (prune and trial.should_prune())

    return run_trial(
        ctx,
        point,
        recorder.trial_dir(point.trial_id),
        on_step=on_step,
        should_stop=lambda: pruned[0],
        node=node,
    )
