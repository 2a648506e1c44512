"""Packed sweeps (`pack: K`): each member of a pack is its own trial: row, Optuna trial, MLflow child."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

from apd.errors import ConfigError
from apd.sweep.results import read_table
from apd.sweep.runner import sweep_main
from apd.sweep.spec import validate_spec
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep
from tests.sweep.test_engines import args

# a grid of 2 lrs x 2 seeds as one pack of 4: lr 1e30 overflows float32 within a few steps, lr 0.01 completes
PACKED = {
    "name": "packed",
    "parameters": {"lr": {"type": "categorical", "values": [0.01, 1.0e30]}},
    "seeds": [0, 1],
    "search": {"algorithm": "grid"},
    "pack": 4,
    "tracking": {"enabled": True},
}


def check_packed(out: Path, engine: str) -> None:
    rows = trial_rows(out)
    assert len(rows) == 4
    status = {(r["param.lr"], r["seed"]): r["status"] for r in rows.values()}
    assert status == {(0.01, 0): "COMPLETE", (0.01, 1): "COMPLETE", (1e30, 0): "DIVERGED", (1e30, 1): "DIVERGED"}
    for r in rows.values():
        assert r["engine"] == engine and r["node"]
        if r["status"] == "COMPLETE":
            assert r["steps_done"] == 60 and r["objective"] == r["metric.mmcs"]
            assert (out / "trials" / r["trial_id"] / "metrics.json").is_file()
        else:
            assert r["error"].startswith("diverged at step ") and r["steps_done"] < 60
    hist = read_table(out / "history.parquet").to_pandas()
    for tid, r in rows.items():
        steps = hist[hist.trial_id == tid].step.tolist()
        if r["status"] == "COMPLETE":
            assert steps == [0, 20, 40, 60]
        else:  # its records before the one that caught the NaN, and none after
            assert steps == list(range(0, r["steps_done"] + 1, 20))[: len(steps)] and max(steps) < r["steps_done"] + 20
    study = optuna.load_study(study_name="packed", storage=f"sqlite:///{out}/optuna.db")
    assert Counter(t.state.name for t in study.trials) == {"COMPLETE": 2, "FAIL": 2}

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("packed")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("apd.kind") == "sweep"]
    assert len(parent) == 1 and parent[0].data.metrics["n_complete"] == 2
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert set(children) == set(rows)
    for tid, r in rows.items():
        child = children[tid]
        assert child.info.status == ("FINISHED" if r["status"] == "COMPLETE" else "FAILED")
        assert r["mlflow_run_id"] == child.info.run_id and child.data.params["lr"] == str(r["param.lr"])
        if r["status"] == "COMPLETE":
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "faithfulness_loss")]
            assert steps == [0, 20, 40, 60]
            assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"metrics.json", "components.pt"}


def test_inline_packed_sweep_records_every_member(
    tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = write_sweep(tmp_path / "packed.yaml", sweep_dict(tiny_target, **PACKED))
    assert sweep_main(args(spec, tmp_path / "out", engine="inline")) == 0
    assert "packing up to 4 trials per step" in capsys.readouterr().out
    check_packed(tmp_path / "out", "inline")


def test_ray_packed_sweep_records_every_member(ray_local: None, tiny_target: Path, tmp_path: Path) -> None:
    spec = write_sweep(tmp_path / "packed.yaml", sweep_dict(tiny_target, **PACKED))
    assert sweep_main(args(spec, tmp_path / "out")) == 0
    check_packed(tmp_path / "out", "ray")
    assert len([p for p in (tmp_path / "out/ray/attempt-1").iterdir() if p.is_dir()]) == 1  # one Tune trial


def spec_of(**changes: Any) -> dict[str, Any]:
    return {
        "experiment": "tms-5-2",
        "objective": {"metric": "mmcs", "mode": "max"},
        "search": {"n_trials": 2},
    } | changes


def test_pack_is_refused_with_pruning() -> None:
    pruning = {"algorithm": "asha", "grace_steps": 100}
    with pytest.raises(ConfigError, match=r"^s.yaml: pack: packed trials cannot be pruned"):
        validate_spec(spec_of(pack=4, pruning=pruning), source="s.yaml")
    assert validate_spec(spec_of(pack="auto", pruning=pruning), source="s.yaml").spec.pack == "auto"
    with pytest.raises(ConfigError, match=r"^s.yaml: pack: "):
        validate_spec(spec_of(pack=0), source="s.yaml")


@pytest.mark.slow
def test_packed_inline_sweep_resumes_after_sigkill(tiny_target: Path, tmp_path: Path) -> None:
    """Killed while a pack runs, after another finished: the finished members are kept, the running
    ones rerun once (in new packs), no point twice."""
    from tests.sweep.test_resume import check_resumed, kill_when_busy, start_sweep

    data = sweep_dict(tiny_target, name="resume", search={"algorithm": "tpe", "n_trials": 3, "seed": 2}, pack=2)
    data["fixed"]["steps"] = 200
    spec, out = write_sweep(tmp_path / "resume.yaml", data), tmp_path / "out"
    before = kill_when_busy(start_sweep(str(spec), "--out", str(out), "--engine", "inline"), out)
    assert Counter(r["status"] for r in before.values())["RUNNING"] == 2  # a whole pack was caught
    assert sweep_main(args(spec, out, engine="inline", resume=True)) == 0
    check_resumed(out, before, total=6)


@pytest.mark.slow
def test_packed_ray_sweep_resumes_after_sigkill(ray_local: None, tiny_target: Path, tmp_path: Path) -> None:
    """The same on Ray (the killed driver on the session's Ray): Tune trials are packs of 2."""
    import ray

    from tests.sweep.test_resume import check_resumed, kill_when_busy, start_sweep

    data = sweep_dict(
        tiny_target, name="resume", search={"algorithm": "random", "n_trials": 4, "seed": 1}, pack=2, max_concurrent=2
    )
    data["fixed"]["steps"] = 300
    spec, out = write_sweep(tmp_path / "resume.yaml", data), tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    before = kill_when_busy(start_sweep(str(spec), "--out", str(out), "--address", address), out)
    assert sweep_main(args(spec, out, resume=True)) == 0
    check_resumed(out, before, total=8)
