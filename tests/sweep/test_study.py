"""Resume's reconcile, on the states a SIGKILL can leave between two Optuna writes (no Ray needed).

Each test builds the stored study as a killed driver leaves it, resumes it, and runs what the
resumed sweep would ask for: every point of every draw must run once, none twice, none new.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from apd.sweep.results import ResultsStore
from apd.sweep.space import DRAW_ATTR, SEED_ATTR, make_space, suggest
from apd.sweep.spec import ValidatedSweep, validate_spec
from apd.sweep.study import create_study, resume_study
from apd.sweep.trial import TrialOutcome, TrialPoint

RANDOM = {
    "experiment": "tms-5-2",
    "fixed": {"steps": 100},
    "objective": {"metric": "mmcs", "mode": "max"},
    "search": {"algorithm": "random", "n_trials": 3, "seed": 0},
    "seeds": [0, 1],
    "parameters": {
        "topk": {"type": "uniform", "low": 0.2, "high": 0.3},
        "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
    },
}


def sweep_of(**changes: Any) -> ValidatedSweep:
    return validate_spec({**RANDOM, **changes}, source="test.yaml", base_dir=Path("."))


def key(point: TrialPoint) -> tuple[str, int, int]:
    return point.setting_id, point.seed, point.draw


def ask_point(study: optuna.Study, sweep: ValidatedSweep) -> TrialPoint:
    """One trial as an engine runs it up to its start: ask, then the define-by-run space."""
    return TrialPoint.from_dict(make_space(sweep)(study.ask())["apd"])


def finish(study: optuna.Study, store: ResultsStore, point: TrialPoint) -> None:
    store.start(point)
    study.tell(point.number, 0.5)
    store.end(point.trial_id, TrialOutcome("COMPLETE", objective=[0.5]))


def run_rest(out: Path, sweep: ValidatedSweep, store: ResultsStore) -> tuple[int, list[TrialPoint]]:
    """Resume, then ask for every trial the sweep still owes (as the engines do)."""
    handle = resume_study(sweep, out, store)
    rest = [ask_point(handle.study, sweep) for _ in range(handle.remaining(sweep.total_trials))]
    return handle.reruns, rest


def test_replica_lost_before_it_suggested_reruns_its_own_point(tmp_path: Path) -> None:
    """The kill lands between `ask()` popping a queued replica and the space suggesting its values:
    the study holds a RUNNING trial with a seed but no params. Its rerun must be the queued point
    (an empty-params rerun would draw new values: a point nobody asked for, and one lost)."""
    sweep = sweep_of()
    handle, store = create_study(sweep, tmp_path), ResultsStore(tmp_path, sweep, "inline")
    fresh = ask_point(handle.study, sweep)  # queues its seed-1 replica
    finish(handle.study, store, fresh)
    lost = handle.study.ask()  # the replica, popped; the driver dies here
    assert lost.params == {} and lost.user_attrs[SEED_ATTR] == 1

    reruns, rest = run_rest(tmp_path, sweep, store)
    assert reruns == 1 and len(rest) == 5
    assert key(rest[0]) == (fresh.setting_id, 1, fresh.draw)  # the replica, under a new id
    assert rest[0].params == fresh.params and rest[0].trial_id != f"t{lost.number:04d}"
    points = [fresh, *rest]
    assert len({key(p) for p in points}) == 6
    assert Counter(p.draw for p in points) == {fresh.draw: 2, rest[1].draw: 2, rest[3].draw: 2}


def test_fresh_draw_lost_before_queueing_replicas_gets_them(tmp_path: Path) -> None:
    """The kill lands after a fresh draw chose its point but before it queued its replicas (here 2
    grid values x 2 seeds): resume reruns the draw and queues the three replicas it never queued."""
    sweep = sweep_of(parameters={**RANDOM["parameters"], "C": {"type": "grid", "values": [5, 6]}})
    handle, store = create_study(sweep, tmp_path), ResultsStore(tmp_path, sweep, "inline")
    trial = handle.study.ask()
    params = {k: suggest(trial, k, p) for k, p in sweep.spec.parameters.items()}
    trial.set_user_attr(DRAW_ATTR, trial.number)
    trial.set_user_attr(SEED_ATTR, 0)  # the space's next step would queue the replicas

    reruns, rest = run_rest(tmp_path, sweep, store)
    assert reruns == 1 and len(rest) == sweep.total_trials == 12
    group = [p for p in rest if p.draw == trial.number]
    assert sorted((p.params["C"], p.seed) for p in group) == [(5, 0), (5, 1), (6, 0), (6, 1)]
    drawn = {"topk": params["topk"], "lr": params["lr"]}
    assert all({k: v for k, v in p.params.items() if k != "C"} == drawn for p in group)
    assert Counter(p.draw for p in rest).most_common()[-1][1] == 4  # the other draws: whole groups too


def test_fresh_draw_lost_while_suggesting_is_dropped(tmp_path: Path) -> None:
    """A fresh trial lost before its seed was set has no point yet: nothing reruns, nothing queued."""
    sweep = sweep_of()
    handle, store = create_study(sweep, tmp_path), ResultsStore(tmp_path, sweep, "inline")
    trial = handle.study.ask()
    suggest(trial, "topk", sweep.spec.parameters["topk"])  # lr not yet suggested, no seed
    reruns, rest = run_rest(tmp_path, sweep, store)
    assert reruns == 0 and len(rest) == 6
    assert all(p.params.keys() == {"topk", "lr"} for p in rest)
    assert Counter(p.draw for p in rest) == {rest[0].draw: 2, rest[2].draw: 2, rest[4].draw: 2}
    assert handle.study.trials[0].state == TrialState.FAIL


def test_grid_search_resume_queues_nothing_extra(tmp_path: Path) -> None:
    """A grid search queues every point at the start; resuming it must not add points."""
    params = {"C": {"type": "categorical", "values": [5, 6]}, "topk": {"type": "grid", "values": [0.2, 0.3]}}
    sweep = sweep_of(parameters=params, search={"algorithm": "grid"})
    handle, store = create_study(sweep, tmp_path), ResultsStore(tmp_path, sweep, "inline")
    first = ask_point(handle.study, sweep)
    finish(handle.study, store, first)
    reruns, rest = run_rest(tmp_path, sweep, store)
    waiting = optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert reruns == 0 and len(rest) == sweep.total_trials - 1 == 7
    assert not waiting.get_trials(states=(TrialState.WAITING,))
    assert len({(p.setting_id, p.seed) for p in [first, *rest]}) == 8
