"""`--resume` after a real SIGKILL of the sweep driver: finished trials kept, lost ones rerun once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from apd.sweep.results import read_table
from apd.sweep.space import INTERRUPTED_ATTR, SEED_ATTR
from apd.sweep.spec import setting_id
from apd.sweep.study import trial_params
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep

ROOT = Path(__file__).resolve().parents[2]


def start_sweep(*argv: str) -> subprocess.Popen[str]:
    # own session: the Ray processes a killed driver leaves behind can be cleaned up by group
    return subprocess.Popen(
        [sys.executable, "-m", "apd.sweep", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=os.environ | {"RAY_ADDRESS": ""},
    )


def kill_when_busy(proc: subprocess.Popen[str], out: Path, timeout: float = 480) -> dict[str, dict]:
    """SIGKILL the driver once >= 2 trials finished while another is running; the rows it left."""
    deadline, statuses = time.monotonic() + timeout, Counter[str]()
    while time.monotonic() < deadline:
        seen = trial_rows(out)
        statuses = Counter(r["status"] for r in seen.values())
        if sum(v for k, v in statuses.items() if k != "RUNNING") >= 2 and statuses["RUNNING"] >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            with contextlib.suppress(ProcessLookupError):  # daemons that driver started, if any
                os.killpg(proc.pid, signal.SIGKILL)
            return seen
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the sweep never had finished and running trials at once (last seen: {dict(statuses)})")


def check_resumed(out: Path, before: dict[str, dict], total: int) -> list[optuna.trial.FrozenTrial]:
    after = trial_rows(out)
    finished_before = {t: r for t, r in before.items() if r["status"] != "RUNNING"}
    for tid, row in finished_before.items():  # kept as they were, not rerun
        assert after[tid]["status"] == row["status"] and after[tid]["end_time"] == row["end_time"]
    assert len(after) == total and "RUNNING" not in {r["status"] for r in after.values()}
    # every (setting, seed) exactly once: nothing duplicated, nothing lost
    assert len({(r["setting_id"], r["seed"]) for r in after.values()}) == total
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{out}/optuna.db")
    interrupted = [t for t in study.trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert not {f"t{t.number:04d}" for t in interrupted} & set(finished_before)  # only unfinished ones
    # a trial the searcher had asked for but not yet given a point has nothing to rerun and no row
    unstarted = [t for t in interrupted if SEED_ATTR not in t.user_attrs]
    assert not {f"t{t.number:04d}" for t in unstarted} & set(after)
    lost = [t for t in interrupted if SEED_ATTR in t.user_attrs]
    assert lost, "the kill interrupted no trial"
    for t in lost:  # each lost point ran again exactly once, under a new id
        key = (setting_id(trial_params(t)), t.user_attrs[SEED_ATTR])  # a popped replica may have no params
        reruns = [tid for tid, r in after.items() if (r["setting_id"], r["seed"]) == key]
        assert len(reruns) == 1 and reruns[0] != f"t{t.number:04d}", (t, sorted(after.items()))
    hist = read_table(out / "history.parquet").to_pandas()
    assert set(hist.trial_id) <= set(after)
    return lost


@pytest.mark.slow
def test_ray_sweep_resumes_after_sigkill(
    ray_local: None, tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The killed driver runs on the session's Ray through --address (no second Ray start-up); Ray
    ends the dead driver's trial actors, and the resume runs in-process on the same Ray."""
    import ray

    from apd.sweep.runner import sweep_main
    from tests.sweep.test_engines import args

    data = sweep_dict(
        tiny_target,
        name="resume",
        search={"algorithm": "random", "n_trials": 4, "seed": 1},
        max_concurrent=2,
        tracking={"enabled": True},
    )
    data["fixed"]["steps"] = 300  # long enough that a trial is caught running on a loaded machine
    spec, out = write_sweep(tmp_path / "resume.yaml", data), tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    before = kill_when_busy(start_sweep(str(spec), "--out", str(out), "--address", address), out)

    assert sweep_main(args(spec, out, resume=True)) == 0
    assert "interrupted, rerun)" in capsys.readouterr().out
    lost = check_resumed(out, before, total=8)

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("resume")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("apd.kind") == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"  # the same parent, reopened
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    interrupted = [r for r in children if r.data.tags.get("apd.interrupted") == "true"]
    assert "RUNNING" not in {r.info.status for r in children}
    assert len(interrupted) == len(lost) and {r.info.status for r in interrupted} == {"KILLED"}
    assert len(children) - len(interrupted) == 8


@pytest.mark.slow
def test_inline_sweep_resumes_after_sigkill(tiny_target: Path, tmp_path: Path) -> None:
    from apd.sweep.runner import sweep_main
    from tests.sweep.test_engines import args

    data = sweep_dict(tiny_target, name="resume", search={"algorithm": "tpe", "n_trials": 3, "seed": 2})
    data["fixed"]["steps"] = 200
    spec, out = write_sweep(tmp_path / "resume.yaml", data), tmp_path / "out"
    before = kill_when_busy(start_sweep(str(spec), "--out", str(out), "--engine", "inline"), out)
    assert sweep_main(args(spec, out, engine="inline", resume=True)) == 0
    check_resumed(out, before, total=6)
