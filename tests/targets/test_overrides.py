"""Target sizes from a config: `target.<field>` overrides validate against the family's spec, train and
cache under their own name, are recorded in the run, and can be swept; relative target paths."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from apd.cli import main
from apd.config import experiment_path, load_config
from apd.errors import ConfigError
from apd.run import run_decomposition
from apd.sweep.spec import load_spec, validate_spec
from apd.targets import cache_path, get_spec, load_target
from apd.targets.tms import TMS

TINY = {"target.n_instances": 2, "target.train.steps": 20, "target.train.batch_size": 64}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(
    ("experiment", "sets", "message"),
    [
        ("tms-5-2", ["target.n_hidden=0"], r"target\.n_hidden: Input should be greater than 0 \(got 0\)"),
        ("tms-5-2", ["target.n_hiddn=3"], r"target\.n_hiddn: unknown key"),
        ("tms-5-2", ["target.train.steps=-1"], r"target\.train\.steps: Input should be greater than 0 \(got -1\)"),
        ("tms-5-2", ["target.kind=resid_mlp"], r"target\.kind: cannot be overridden"),
        (
            "tms-5-2",
            ["target.name=null", "target.path=x.pt", "target.n_hidden=3"],
            r"target\.n_hidden: a spec override needs a registered target\.name",
        ),
        ("resid-mlp-1", ["target.d_mlp=many"], r"target\.d_mlp: Input should be a valid integer"),
        ("gated-4", ["target.n_layers=3"], r"target\.n_layers: n_functions \* neurons_per_function must be divisible"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_field(
    experiment: str, sets: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [x for s in sets for x in ("--set", s)]
    assert main(["decompose", experiment, "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_overridden_target_trains_and_caches_under_its_own_name(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config("tms-5-2", {"target.n_features": 20, "target.n_hidden": 5, **TINY})
    assert cfg.target.overrides == {
        "n_features": 20,
        "n_hidden": 5,
        "n_instances": 2,
        "train": {"steps": 20, "batch_size": 64},
    }
    loaded = load_target(cfg.target, "cpu")
    assert isinstance(loaded.model, TMS) and (loaded.model.n_features, loaded.model.n_hidden) == (20, 5)
    assert loaded.model.n_instances == 2 and loaded.spec.train.steps == 20  # type: ignore[attr-defined]
    path = cache_path("tms-5-2", 0, spec=loaded.spec)
    assert re.fullmatch(r"tms-5-2-[0-9a-f]{8}-seed0\.pt", path.name) and path != cache_path("tms-5-2", 0)
    assert [p.name for p in cache.iterdir()] == [path.name]
    assert "training it (20 steps)" in capsys.readouterr().out
    again = load_target(load_config("tms-5-2", {**TINY, "target.n_hidden": 5, "target.n_features": 20}).target, "cpu")
    assert capsys.readouterr().out == "" and np.array_equal(again.model.W.numpy(), loaded.model.W.numpy())
    # another size is another file; the registered values themselves are the registered target's file
    other = load_config("tms-5-2", {"target.n_hidden": 3, **TINY}).target
    assert cache_path("tms-5-2", 0, spec=load_target(other, "cpu").spec) not in (path, cache_path("tms-5-2", 0))
    assert cache_path("tms-5-2", 0, spec=get_spec("tms-5-2").model_copy()) == cache_path("tms-5-2", 0)


def test_the_run_records_the_overrides(tmp_path: Path) -> None:
    overrides = {"target.n_hidden": 3, **TINY, "steps": 2, "batch_size": 16, "eval.figures": False}
    result = run_decomposition(load_config("tms-5-2", overrides), tmp_path / "run", progress=False)
    assert result.status == "finished" and result.metrics["n_instances"] == 2
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["target"]
    assert (
        stored["name"] == "tms-5-2" and stored["n_hidden"] == 3 and stored["train"] == {"steps": 20, "batch_size": 64}
    )
    # the stored config reruns the same target
    assert load_config(tmp_path / "run" / "config.yaml").target == load_config("tms-5-2", overrides).target


def sweep_file(folder: Path, **changes: object) -> Path:
    spec = {
        "name": "sizes",
        "experiment": "tms-5-2",
        "fixed": {**TINY, "steps": 3, "batch_size": 16, "eval.figures": False},
        "parameters": {"target.n_hidden": {"type": "grid", "values": [2, 3]}},
        "seeds": [0],
        "search": {"algorithm": "grid"},
        "objective": {"metric": "mmcs", "mode": "max"},
        "tracking": {"enabled": False},
        **changes,
    }
    path = folder / "sizes.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_sweep_over_target_sizes_validates_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = sweep_file(tmp_path, parameters={"target.n_hidden": {"type": "int", "low": 0, "high": 3}})
    with pytest.raises(ConfigError, match=r"sizes\.yaml: parameters\.target\.n_hidden\.low: must be > 0 \(got 0\)"):
        load_spec(bad)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file(tmp_path)), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 0
    trials = pd.read_parquet(out / "trials.parquet").sort_values("param.target.n_hidden")
    assert trials["status"].tolist() == ["COMPLETE", "COMPLETE"] and trials["param.target.n_hidden"].tolist() == [2, 3]
    assert ['"n_hidden": 2' in s for s in trials["target_spec"]] == [True, False]
    assert ['"n_hidden": 3' in s for s in trials["target_spec"]] == [False, True]
    assert trials["n_instances"].tolist() == [2, 2] and set(trials["target"]) == {"tms-5-2"}
    for tid, h in zip(trials["trial_id"], (2, 3), strict=True):
        assert yaml.safe_load((out / "trials" / tid / "config.yaml").read_text())["target"]["n_hidden"] == h


def test_relative_target_paths_read_from_the_file_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project"
    (folder / "nets").mkdir(parents=True)
    np.savez(folder / "nets" / "net.npz", W0=np.eye(3, dtype=np.float32))
    exp = folder / "exp.yaml"
    data = yaml.safe_load(experiment_path("tms-5-2").read_text())
    exp.write_text(yaml.safe_dump({**data, "target": {"path": "nets/net.npz"}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    net = str(folder / "nets" / "net.npz")
    assert load_config(exp).target.path == net  # absolute in the config (so in the run's config.yaml)
    assert load_target(load_config(exp).target, "cpu").model.n_inputs == 3
    # an override is relative to where the command runs
    (elsewhere / "mine.npz").write_bytes((folder / "nets" / "net.npz").read_bytes())
    assert load_config(exp, {"target.path": "mine.npz"}).target.path == str(elsewhere / "mine.npz")
    # a sweep: its experiment's path is relative to the experiment, a fixed one to the sweep file
    sweep = {
        "experiment": "exp.yaml",
        "fixed": {"steps": 3},
        "search": {"algorithm": "random", "n_trials": 1},
        "objective": {"metric": "identity_error", "mode": "min"},
    }
    (folder / "s1.yaml").write_text(yaml.safe_dump(sweep))
    assert load_spec(folder / "s1.yaml").config({}, 0).target.path == net
    sub = folder / "sweeps"
    sub.mkdir()
    (sub / "s2.yaml").write_text(
        yaml.safe_dump({**sweep, "experiment": "../exp.yaml", "fixed": {"target.path": "../nets/net.npz"}})
    )
    assert load_spec(sub / "s2.yaml").config({}, 0).target.path == net
    assert (
        validate_spec({**sweep, "experiment": str(exp)}, source="x", base_dir=folder).config({}, 0).target.path == net
    )
