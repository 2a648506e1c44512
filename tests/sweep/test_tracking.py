"""MLflow and Optuna as a sweep leaves them: a dead or hung server costs one warning and no time,
`apd sync` replays OUT idempotently, the experiment opens on its trials, the study links to them,
and a resume with nothing to do leaves the parent run alone (inline engine, real SQLite stores)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from apd import cli
from apd.sweep.runner import sweep_main
from apd.sweep.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from apd.sweep.trial import COUNT_KEYS
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep
from tests.sweep.test_engines import args

ONE_DRAW = {"search": {"algorithm": "random", "n_trials": 1, "seed": 0}}


def runs_of(uri: str, name: str) -> tuple[MlflowClient, str, Run, dict[str, Run]]:
    """The client, experiment id, parent run and child runs (by name) of sweep `name` in `uri`."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("apd.kind") == "sweep"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(runs) == 1 + len(children)
    return client, exp.experiment_id, parent, children


def check_trial_runs(client: MlflowClient, out: Path, children: dict[str, Run]) -> None:
    rows = trial_rows(out)
    assert sorted(children) == sorted(rows)
    for tid, run in children.items():
        assert run.info.status == "FINISHED" and run.data.tags["apd.kind"] == "trial"
        assert run.data.params["steps"] == "60" and run.data.tags["apd.seed"] == str(rows[tid]["seed"])
        # curves at every report, final values at step 0 (values, not one-point curves at the end)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "total_loss")] == [0, 20, 40, 60]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "mmcs")] == [0]
        assert run.data.metrics["objective"] == rows[tid]["objective"]
        assert {"config.yaml", "metrics.json", "history.jsonl"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }


@pytest.fixture
def hung_server() -> Iterator[str]:
    """A port that accepts connections and never answers (a wedged server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("server", ["dead", "hung"])
def test_unreachable_tracking_costs_one_warning_and_sync_replays_it(
    tiny_target: Path,
    tmp_path: Path,
    server: str,
    hung_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    uri = "http://127.0.0.1:9" if server == "dead" else hung_server
    if server == "hung":  # MLflow's own settings (the sweep's defaults bound a call to ~1 min)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    spec, out = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW)), tmp_path / "out"
    start = time.monotonic()
    assert sweep_main(args(spec, out, engine="inline", tracking_uri=uri)) == 0
    elapsed = time.monotonic() - start
    rows = trial_rows(out)
    assert len(rows) == 2 and {r["status"] for r in rows.values()} == {"COMPLETE"}
    trials_s = sum((r["end_time"] - r["start_time"]).total_seconds() for r in rows.values())
    assert elapsed < trials_s + 30, (elapsed, trials_s)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow ({uri}) failed at open"), captured.err
    assert f"replay them: apd sync {out} --tracking-uri {uri}" in captured.out
    if server == "hung":
        return

    replay = f"sqlite:///{tmp_path / 'replay.db'}"
    assert cli.main(["sync", str(out), "--tracking-uri", replay]) == 0
    assert "parent run created, 2 trial runs created, 0 unchanged" in capsys.readouterr().out
    client, _, parent, children = runs_of(replay, "s")
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == 2
    check_trial_runs(client, out, children)
    assert {t: r["mlflow_run_id"] for t, r in trial_rows(out).items()} == {
        t: r.info.run_id for t, r in children.items()
    }
    # idempotent: a second sync finds everything in place and changes nothing
    assert cli.main(["sync", str(out), "--tracking-uri", replay]) == 0
    assert "parent run unchanged, 0 trial runs created, 2 unchanged" in capsys.readouterr().out
    _, _, again, children_again = runs_of(replay, "s")
    assert again.info.end_time == parent.info.end_time and sorted(children_again) == sorted(children)
    # an upload cut short (the server died during it) is completed
    stored = Path(children["t0001"].info.artifact_uri.removeprefix("file://"))
    (stored / "components.pt").unlink()
    assert cli.main(["sync", str(out), "--tracking-uri", replay]) == 0
    assert "0 trial runs created, 1 given their artifacts, 1 unchanged" in capsys.readouterr().out
    assert (stored / "components.pt").is_file()


def test_mlflow_opens_on_the_trials_optuna_links_them_and_a_noop_resume_changes_nothing(
    tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = sweep_dict(tiny_target, **ONE_DRAW, tracking={"enabled": True})
    spec, out = write_sweep(tmp_path / "s.yaml", data), tmp_path / "out"
    assert sweep_main(args(spec, out, engine="inline")) == 0
    head = capsys.readouterr().out.splitlines()[1:4]
    uri = f"sqlite:///{out}/mlflow.db"
    assert head[0].startswith(f"MLflow: mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/#/")
    assert head[1] == f"Optuna: optuna-dashboard sqlite:///{out}/optuna.db"
    client, exp_id, parent, children = runs_of(uri, "s")
    check_trial_runs(client, out, children)
    tags = client.get_experiment(exp_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and "apd.kind" in tags["mlflow.note.content"]
    view = json.loads(tags["mlflow.sharedViewState.apd-s"])
    assert view["searchFilter"] == "tags.`apd.sweep` = 's' and tags.`apd.kind` = 'trial'"
    assert view["orderByKey"] == "metrics.`objective`" and view["orderByAsc"] is False
    assert "metrics.`mmcs`" in view["selectedColumns"] and "params.`topk`" in view["selectedColumns"]
    assert f"/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=apd-s" in head[0]
    assert {k: parent.data.metrics[k] for k in COUNT_KEYS} == {
        "n_complete": 2,
        "n_pruned": 0,
        "n_failed": 0,
        "n_diverged": 0,
        "n_running": 0,
        "n_done": 2,
        "n_trials": 2,
    }

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out}/optuna.db")
    assert study.metric_names == ["mmcs"]
    for t in study.trials:
        tid = t.user_attrs["apd.trial_id"]
        assert t.user_attrs["apd.mlflow_run_id"] == children[tid].info.run_id
        assert sorted(t.intermediate_values) == [0, 20, 40, 60]  # total_loss at every report
    assert study.user_attrs["apd.mlflow_parent_run_id"] == parent.info.run_id

    # a resume with nothing to run reopens nothing and moves no end time
    assert sweep_main(args(None, out, engine="inline", resume=True)) == 0
    _, _, after, children_after = runs_of(uri, "s")
    assert (after.info.status, after.info.end_time) == ("FINISHED", parent.info.end_time)
    assert {k: r.info.end_time for k, r in children_after.items()} == {k: r.info.end_time for k, r in children.items()}

    # a sweep from before the uid tag: its parent is found by the id the study recorded, and tagged
    client.delete_tag(parent.info.run_id, "apd.sweep_uid")
    for run in children.values():
        client.delete_tag(run.info.run_id, "apd.kind")
    study.set_user_attr("apd.sweep_uid", "0123abcd")
    capsys.readouterr()
    assert cli.main(["sync", str(out)]) == 0
    assert "parent run unchanged, 0 trial runs created, 2 unchanged" in capsys.readouterr().out
    _, _, adopted, children_after = runs_of(uri, "s")
    assert adopted.info.run_id == parent.info.run_id and adopted.data.tags["apd.sweep_uid"] == "0123abcd"
    assert {r.data.tags["apd.kind"] for r in children_after.values()} == {"trial"}

    assert cli.main(["status", str(out)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[1] == "driver: none (no sweep driver holds OUT)"
    assert status[2] == "trials: 2/2 done (2 COMPLETE), 0 running, 0 to run"
    assert status[3].startswith("best: mmcs=")
