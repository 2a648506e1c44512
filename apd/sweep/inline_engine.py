"""The inline engine: the same trial function, one trial at a time, under plain Optuna in-process.

No daemons and no start-up cost; pruning comes from Optuna's successive-halving pruner (the
asynchronous rule ASHA uses) fed the pruning metric at every report. With `pack` > 1 it asks for
several trials at once and trains them as one pack (`apd.pack`), each still its own Optuna trial,
row and MLflow run, told and recorded as soon as it ends.
"""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import torch

from apd.sweep.recorder import Recorder
from apd.sweep.space import PackDrawer, intermediate_value, make_pruner, make_sampler, make_space
from apd.sweep.spec import ValidatedSweep
from apd.sweep.study import StudyHandle
from apd.sweep.trial import TrialContext, TrialOutcome, TrialPoint, resolve_pack, run_pack_trial, run_trial

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
    node = socket.gethostname()
    size = resolve_pack(sweep, remaining)
    if size > 1:
        _run_packs(sweep, study, recorder, ctx, remaining, size, node)
        return
    space = make_space(sweep)
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


def _run_packs(
    sweep: ValidatedSweep,
    study: optuna.Study,
    recorder: Recorder,
    ctx: TrialContext,
    remaining: int,
    size: int,
    node: str,
) -> None:
    """Packs of up to `size` trials until `remaining` ran; each member is told and recorded as it ends."""
    print(f"packing up to {size} trials per step")
    drawer = PackDrawer(study, sweep, size, remaining)
    while pack := drawer.next_pack():
        trials = {point.trial_id: trial for trial, point in pack}
        recorder.started(*(point for _, point in pack))

        def on_end(tid: str, outcome: TrialOutcome, trials: dict[str, optuna.Trial] = trials) -> None:
            recorder.ended(tid, outcome)
            if recorder.trial_dir(tid).is_dir():
                recorder.artifacts(tid, recorder.trial_dir(tid))
            values = outcome.objective if outcome.status == "COMPLETE" else None
            study.tell(trials[tid], values, state=STATES[outcome.status])

        def on_step(records: dict[str, dict[str, float]]) -> None:
            for tid, record in records.items():
                recorder.step(tid, record, node)

        run_pack_trial(
            ctx,
            [point for _, point in pack],
            {tid: recorder.trial_dir(tid) for tid in trials},
            on_step=on_step,
            on_end=on_end,
            node=node,
        )
