"""Real sweeps on the tiny target: the inline engine, the Ray engine (session Ray), MLflow read-back."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from apd.errors import ConfigError
from apd.sweep.results import read_table
from apd.sweep.runner import sweep_main
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep


def args(spec: Path | None, out: Path, **kw: object) -> argparse.Namespace:
    base = {
        "spec": None if spec is None else str(spec),
        "out": str(out),
        "address": None,
        "engine": "ray",
        "trials": None,
        "resume": False,
        "tracking_uri": None,
        "no_tracking": False,
    }
    return argparse.Namespace(**(base | kw))


def study_states(out: Path, name: str) -> Counter[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out}/optuna.db")
    return Counter(t.state.name for t in study.trials)


# A grid whose outcomes are known in advance (one trial at a time, so ASHA's order is fixed):
#   lr 0.01 on cpu -> COMPLETE; lr 0.01 on device "bogus" -> FAILED (the run raises);
#   lr 0.02 -> PRUNED at step 20 (ASHA on lr, min: worse than the 0.01 trial at that rung);
#   lr 1e30 -> DIVERGED (float32 overflows to NaN within a few steps).
FAULTS = {
    "parameters": {
        "lr": {"type": "categorical", "values": [0.01, 0.02, 1.0e30]},
        "device": {"type": "categorical", "values": ["cpu", "bogus"], "when": {"lr": 0.01}},
    },
    "seeds": [0],
    "search": {"algorithm": "grid"},
    "pruning": {"algorithm": "asha", "metric": "lr", "mode": "min", "grace_steps": 20},
    "max_concurrent": 1,
}
EXPECTED = {"t0000": "COMPLETE", "t0001": "FAILED", "t0002": "PRUNED", "t0003": "DIVERGED"}


def check_faults(out: Path, engine: str) -> dict[str, dict]:
    rows = trial_rows(out)
    assert {t: r["status"] for t, r in rows.items()} == EXPECTED
    assert rows["t0001"]["error"] == "ConfigError: device: not a torch device (got 'bogus')"
    assert rows["t0003"]["error"].startswith("diverged at step ")
    assert rows["t0002"]["steps_done"] == 20 and rows["t0002"]["objective"] is None
    assert rows["t0000"]["objective"] == rows["t0000"]["metric.mmcs"] and rows["t0000"]["steps_done"] == 60
    assert all(r["engine"] == engine and r["sweep"] == "faults" and r["node"] for r in rows.values())
    hist = read_table(out / "history.parquet").to_pandas()
    assert hist[hist.trial_id == "t0000"].step.tolist() == [0, 20, 40, 60]
    assert study_states(out, "faults") == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 2}
    assert (out / "trials/t0000/metrics.json").is_file() and not (out / "trials/t0001").exists()
    return rows


def test_inline_engine_records_every_outcome(tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_sweep(tmp_path / "faults.yaml", sweep_dict(tiny_target, **FAULTS))
    assert sweep_main(args(spec, tmp_path / "out", engine="inline")) == 0
    check_faults(tmp_path / "out", "inline")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep faults: 4 trials (4 settings x 1), engine inline; 0 done, 4 to run"
    trials = [line for line in lines if " trial t" in line]
    assert trials[0].startswith("[1/4] trial t0000 COMPLETE mmcs=")
    assert trials[2].startswith("[3/4] trial t0002 PRUNED at step 20")


def test_inline_multi_objective_nsga2(tiny_target: Path, tmp_path: Path) -> None:
    data = sweep_dict(
        tiny_target,
        objective=[{"metric": "mmcs", "mode": "max"}, {"metric": "faithfulness_loss", "mode": "min"}],
        search={"algorithm": "nsga2", "n_trials": 2, "seed": 0},
    )
    out = tmp_path / "out"
    assert sweep_main(args(write_sweep(tmp_path / "mo.yaml", data), out, engine="inline")) == 0
    rows = trial_rows(out)
    assert len(rows) == 4 and {r["status"] for r in rows.values()} == {"COMPLETE"}
    for r in rows.values():
        assert (r["objective.0"], r["objective.1"]) == (r["metric.mmcs"], r["metric.faithfulness_loss"])
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{out}/optuna.db")
    assert len(study.directions) == 2 and 1 <= len(study.best_trials) <= 4


def test_fresh_sweep_refuses_a_used_out_and_resume_needs_one(tiny_target: Path, tmp_path: Path) -> None:
    spec = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, search={"algorithm": "random", "n_trials": 1}))
    assert sweep_main(args(spec, tmp_path / "out", engine="inline", trials=1)) == 0
    with pytest.raises(ConfigError, match=r"already holds a sweep \(.*\); pass --resume"):
        sweep_main(args(spec, tmp_path / "out", engine="inline"))
    with pytest.raises(ConfigError, match="nothing to resume"):
        sweep_main(args(spec, tmp_path / "other", engine="inline", resume=True))
    # a finished sweep resumes to nothing new; more draws extend it
    assert sweep_main(args(None, tmp_path / "out", engine="inline", resume=True)) == 0
    assert sweep_main(args(spec, tmp_path / "out", engine="inline", resume=True, trials=2)) == 0
    rows = trial_rows(tmp_path / "out")
    assert sorted(rows) == ["t0000", "t0001", "t0002", "t0003"]
    # the resumed run draws a new setting (its sampler is seeded apart from the first run's)
    assert rows["t0002"]["setting_id"] == rows["t0003"]["setting_id"] != rows["t0000"]["setting_id"]
    changed = write_sweep(
        tmp_path / "s.yaml", sweep_dict(tiny_target, seeds=[0, 5], search={"algorithm": "random", "n_trials": 1})
    )
    with pytest.raises(ConfigError, match=r"seeds.*differs from the sweep being resumed"):
        sweep_main(args(changed, tmp_path / "out", engine="inline", resume=True))


def test_ray_engine_with_asha_and_mlflow(ray_local: None, tiny_target: Path, tmp_path: Path) -> None:
    import ray

    data = sweep_dict(tiny_target, **FAULTS, tracking={"enabled": True})
    data["fixed"]["eval.figures"] = True
    out = tmp_path / "out"
    start = time.monotonic()
    assert sweep_main(args(write_sweep(tmp_path / "faults.yaml", data), out)) == 0
    print(f"ray sweep of 4 trials: {time.monotonic() - start:.1f} s")
    rows = check_faults(out, "ray")
    assert {r["node"] for r in rows.values()} == {ray.get_runtime_context().get_node_id()}
    assert (out / "trials/t0000/figures").is_dir() and (out / "trials/t0000/components.pt").is_file()
    # ended trials leave no Ray checkpoints behind (their run folder is in OUT/trials), only Tune's records
    trial_dirs = sorted(p.name for p in (out / "ray/attempt-1").iterdir() if p.is_dir())
    assert trial_dirs == sorted(EXPECTED)
    assert not list((out / "ray").glob("**/checkpoint_*"))
    assert (out / "ray/attempt-1/t0002/result.json").is_file()

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("faults")
    assert exp is not None and exp.artifact_location == (out / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("apd.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["n_complete"] == 1 and parent.data.metrics["n_trials"] == 4
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {k: r.info.status for k, r in children.items()} == {
        "t0000": "FINISHED",
        "t0001": "FAILED",
        "t0002": "KILLED",
        "t0003": "FAILED",
    }
    done = children["t0000"]
    assert done.data.tags["apd.seed"] == "0" and done.data.tags["apd.engine"] == "ray"
    assert done.data.tags["apd.target"] == str(tiny_target) and done.data.params["lr"] == "0.01"
    assert done.data.params["steps"] == "60" and done.data.metrics["objective"] == rows["t0000"]["objective"]
    steps = [m.step for m in client.get_metric_history(done.info.run_id, "faithfulness_loss")]
    assert steps == [0, 20, 40, 60]
    arts = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert {"config.yaml", "metrics.json", "components.pt", "figures"} <= arts
    assert children["t0001"].data.tags["apd.error"].startswith("ConfigError: device")
    assert children["t0002"].data.tags["pruned"] == "true"
    assert rows["t0000"]["mlflow_run_id"] == done.info.run_id
    # final values at step 0; every status count on the parent, zeros included
    assert [m.step for m in client.get_metric_history(done.info.run_id, "mmcs")] == [0]
    counts = {k: parent.data.metrics[k] for k in ("n_complete", "n_pruned", "n_failed", "n_diverged", "n_running")}
    assert counts == {"n_complete": 1, "n_pruned": 1, "n_failed": 1, "n_diverged": 1, "n_running": 0}
    # the Ray side fills the study as the inline engine does: ids, run ids, intermediate values
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{out}/optuna.db")
    first = study.trials[0]
    assert first.user_attrs["apd.trial_id"] == "t0000" and first.user_attrs["apd.mlflow_run_id"] == done.info.run_id
    assert sorted(first.intermediate_values) == [0, 20, 40, 60]  # the pruning metric (lr) at each report


def test_ray_unmeetable_resources_fail_fast(ray_local: None, tiny_target: Path, tmp_path: Path) -> None:
    spec = write_sweep(tmp_path / "gpu.yaml", sweep_dict(tiny_target, resources={"cpus": 1, "gpus": 1}))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"resources: a trial needs 1 CPU and 1 GPU on one node, but no node"):
        sweep_main(args(spec, tmp_path / "out"))
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()
