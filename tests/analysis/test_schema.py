"""Results of schema version 1 still open (completed from their sweep.yaml), and version 2's columns.

`data/schema1/` was written by the code of commit 960a660 (schema 1: no method, target, family,
instance count or experiment reference; the old verdict, no per-check columns): `git archive 960a660`
into a folder, then a script calling that code's `validate_spec`, `judge`, `trials_table` and
`history_table` with PYTHONPATH pointing at it. A TMS 5-2 sweep with 2 instances per trial:
* topk 0.2, seeds 0-2: every instance recovered except seed 2's second (ML2R 0.6) -> 5/6 instances;
* topk 0.5: instance 0 merges two features (4 distinct) on seeds 0 and 1, seed 2 diverged -> 2/6.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from apd.analysis import analyze, failure_counts, load_trials, settings_table, write_report
from apd.analysis._answer import rerun_command
from apd.config import experiment_path, load_config
from apd.sweep.results import SCHEMA_VERSION, ResultsStore
from apd.sweep.spec import validate_spec
from apd.sweep.trial import TrialPoint

V1 = Path(__file__).parent / "data" / "schema1"


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    return Path(shutil.copytree(V1, tmp_path / "legacy"))


def test_version_1_folder_opens_with_the_columns_it_lacked(v1: Path) -> None:
    assert pq.read_schema(v1 / "trials.parquet").metadata[b"apd_schema_version"] == b"1"
    trials = load_trials(v1)
    assert set(trials["schema"]) == {"1"}
    assert set(trials["method"]) == {"apd"} and set(trials["target"]) == {"tms-5-2"}
    assert set(trials["family"]) == {"tms"} and set(trials["experiment_ref"]) == {"tms-5-2"}
    # the diverged trial has no lists: it takes its target's instance count
    assert trials["n_instances"].tolist() == [2] * 6
    assert '"n_features": 5' in trials["target_spec"].iloc[0]


def test_version_1_instances_and_failure_modes(v1: Path, tmp_path: Path) -> None:
    table = settings_table(load_trials(v1)).set_index("setting_id")
    assert table["recovery"].to_dict() == {"s-0.2": "5/6", "s-0.5": "2/6"}
    assert table["trials_recovery"].to_dict() == {"s-0.2": "2/3", "s-0.5": "0/3"}
    assert not table["recovers"].any()  # 5/6 = 0.83 < 0.9
    assert settings_table(load_trials(v1), share=0.8).set_index("setting_id")["recovers"]["s-0.2"]
    a = analyze([v1])
    # the checks schema 1 measured judge its failures; the weight checks it never stored are not counted
    counts = failure_counts(a.trials).set_index("mode")["instances"].to_dict()
    assert counts == {"diverged": 2, "non-distinct matching": 2, "low ML2R": 1}
    text = write_report(a, tmp_path / "report").read_text()
    assert "written by schema version 1" in text
    rule = "- TMS 5-2 (tms-5-2) with APD: MMCS >= 0.99; ML2R >= 0.8; one-to-one argmax matching (as many distinct "
    assert f"{rule}components as features).\n" in text  # no weight rule: schema 1 never measured one
    # re-judging works on the stored numbers, with the same measured checks
    again = analyze([v1], eval_cfg={"ml2r_min": 0.5})
    assert settings_table(again.trials).set_index("setting_id")["recovery"]["s-0.2"] == "6/6"


def _store(tmp_path: Path, experiment: str) -> ResultsStore:
    spec = {
        "experiment": experiment,
        "fixed": {"steps": 10, "batch_size": 16},
        "parameters": {"topk": {"type": "uniform", "low": 0.2, "high": 0.3}},
        "search": {"algorithm": "random", "n_trials": 1},
        "objective": {"metric": "mmcs", "mode": "max"},
    }
    sweep = validate_spec(spec, source=str(tmp_path / "s.yaml"), base_dir=tmp_path)
    return ResultsStore(tmp_path, sweep, "inline")


def test_version_2_rows_name_method_target_and_a_runnable_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCHEMA_VERSION == "2"
    exp = tmp_path / "configs" / "hand.yaml"
    exp.parent.mkdir()
    data = yaml.safe_load(experiment_path("tms-5-2").read_text())
    exp.write_text(yaml.safe_dump({**data, "target": {"name": "tms-5-2", "n_hidden": 3}}))
    store = _store(tmp_path, "configs/hand.yaml")
    store.start(TrialPoint(0, "t0000", 0, 0, "s0", {"topk": 0.25}))
    row = store.rows["t0000"]
    assert (row["method"], row["target"], row["family"], row["n_instances"]) == ("apd", "tms-5-2", "tms", 12)
    assert '"n_hidden": 3' in row["target_spec"] and row["experiment"] == "configs/hand.yaml"
    assert row["experiment_ref"] == str(exp.resolve())
    store.write()
    # the rerun command names the YAML by its absolute path: it works from any folder
    trial = load_trials(tmp_path).iloc[0]
    cmd = rerun_command(trial)
    assert cmd.startswith(f"apd decompose {exp.resolve()} --set topk=0.25")
    monkeypatch.chdir(tmp_path.parent)
    assert load_config(trial["experiment_ref"]).target.overrides == {"n_hidden": 3}
