"""Sweep YAML validation: good files load, bad ones fail in one line naming the file and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apd.config import load_config
from apd.errors import ConfigError
from apd.sweep.spec import corner_points, grid_combos, grid_points, load_spec, setting_id

BASE = {
    "experiment": "tms-5-2",
    "fixed": {"steps": 200, "batch_size": 256},
    "report_every": 50,
    "parameters": {"topk": {"type": "uniform", "low": 0.15, "high": 0.3}},
    "seeds": [0, 1, 2],
    "search": {"algorithm": "tpe", "n_trials": 4},
    "objective": {"metric": "mmcs", "mode": "max"},
}


def write(tmp_path: Path, data: dict | str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def with_(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def test_good_file_resolves_counts_and_configs(tmp_path: Path) -> None:
    sweep = load_spec(write(tmp_path, BASE, "quick.yaml"))
    assert sweep.name == "quick"
    assert sweep.report_every == 50 and sweep.max_steps == 200
    # 4 draws x 1 grid combination x 3 seeds
    assert (sweep.n_draws, sweep.group_size, sweep.total_trials) == (4, 3, 12)
    cfg = sweep.config({"topk": 0.2}, 2)
    assert (cfg.topk, cfg.seed, cfg.target.seed, cfg.log_every, cfg.steps) == (0.2, 2, 0, 50, 200)


def test_seed_target_also_seeds_the_target(tmp_path: Path) -> None:
    sweep = load_spec(write(tmp_path, with_(seed_target=True)))
    assert sweep.config({"topk": 0.2}, 3).target.seed == 3


BAD = [
    # (changes to BASE, expected message after "x.yaml: ")
    ({"parameters__topk__low": -1}, "parameters.topk.low: must be > 0 (got -1)"),
    ({"parameters__topkk": {"type": "uniform", "low": 0.1, "high": 0.2}}, "parameters.topkk: unknown key"),
    (
        {"parameters__target.feature_prob": {"type": "categorical", "values": [0.05]}},
        "parameters.target.feature_prob: unknown key",
    ),
    ({"fixed__foo": 1}, "fixed.foo: unknown key"),
    ({"fixed__C.x": 1}, "fixed.C.x: C is not a section"),
    ({"fixed__lr": -0.1}, "fixed.lr: must be > 0 (got -0.1)"),
    ({"objective": None}, "objective: required"),
    ({"bogus": 1}, "bogus: unknown key"),
    (
        {"parameters__lr": {"type": "normal", "low": 0.1, "high": 1}},
        "parameters.lr: unknown type 'normal'; one of categorical, grid, uniform, loguniform, int",
    ),
    (
        {"parameters__lr": {"low": 0.1, "high": 1}},
        "parameters.lr: needs type: one of categorical, grid, uniform, loguniform, int",
    ),
    ({"parameters__lr": 3}, "parameters.lr: expected a mapping (got 3)"),
    ({"parameters__topk__bogus": 1}, "parameters.topk.bogus: unknown key"),
    (
        {"parameters__topk__low": "x"},
        "parameters.topk.low: Input should be a valid number, unable to parse string as a number (got 'x')",
    ),
    (
        {"parameters__lr": {"type": "loguniform", "low": 0, "high": 1}},
        "parameters.lr.low: must be > 0 for loguniform (got 0)",
    ),
    ({"parameters__topk__high": 0.1}, "parameters.topk.high: must be > low (0.15) (got 0.1)"),
    ({"parameters__topk__step": 0.04}, "parameters.topk.step: high - low (0.15) must be a multiple of step (got 0.04)"),
    (
        {"parameters__C": {"type": "int", "low": 3, "high": 9, "step": 2, "log": True}},
        "parameters.C: log int ranges need low > 0 and step 1 (got low 3, step 2)",
    ),
    (
        {"parameters__C": {"type": "categorical", "values": [3, 3]}},
        "parameters.C.values: must be distinct (got [3, 3])",
    ),
    (
        {"parameters__C": {"type": "categorical", "values": []}},
        "parameters.C.values: List should have at least 1 item after validation, not 0 (got [])",
    ),
    (
        {"parameters__attribution_type": {"type": "categorical", "values": ["gradient", "bogus"]}},
        "parameters.attribution_type.values.1: Input should be 'gradient', 'gradient_apd', 'activation' or 'ablation' "
        "(got 'bogus')",
    ),
    ({"parameters__topk__low": 0.001}, "topk * batch_size must be >= 1 (got 0.001 * 256) (at topk=0.001)"),
    (
        {"parameters__seed": {"type": "categorical", "values": [1, 2]}},
        "parameters.seed: set the replica seeds with `seeds`",
    ),
    ({"fixed__log_every": 10}, "fixed.log_every: set the reporting interval with `report_every`"),
    ({"fixed__topk": 0.2}, "parameters.topk: also set in fixed; keep one"),
    (
        {"parameters__m": {"type": "int", "low": 1, "high": 3, "when": {"C": 5}}},
        "parameters.m.when.C: must name a parameter defined above m",
    ),
    (
        {"parameters__m": {"type": "int", "low": 1, "high": 3, "when": {"topk": 0.2}}},
        "parameters.m.when.topk: conditions need a categorical or grid parameter",
    ),
    ({"search__n_trials": None}, "search.n_trials: required for tpe search"),
    ({"search__n_trials": 0}, "search.n_trials: must be > 0 (got 0)"),
    (
        {"search__algorithm": "bayes"},
        "search.algorithm: Input should be 'grid', 'random', 'tpe', 'cmaes' or 'nsga2' (got 'bayes')",
    ),
    ({"search__algorithm": "grid"}, "parameters.topk: grid search needs values or a step (uniform without step)"),
    ({"objective": {"metric": "mmc", "mode": "max"}}, "objective.0.metric: unknown metric 'mmc'"),
    ({"objective": {"metric": "mmcs", "mode": "up"}}, "objective.0.mode: Input should be 'min' or 'max' (got 'up')"),
    (
        {
            "objective": [{"metric": "mmcs", "mode": "max"}, {"metric": "ml2r", "mode": "max"}],
            "search__algorithm": "cmaes",
        },
        "search.algorithm: cmaes is single-objective; use nsga2, tpe or random",
    ),
    ({"pruning": {"algorithm": "asha"}}, "pruning.grace_steps: required for asha"),
    ({"pruning": {"algorithm": "asha", "grace_steps": 50, "metric": "mmcs"}}, "pruning.metric: must be a step metric"),
    (
        {
            "pruning": {"algorithm": "asha", "grace_steps": 50},
            "objective": [{"metric": "mmcs", "mode": "max"}, {"metric": "ml2r", "mode": "max"}],
        },
        "pruning.algorithm: multi-objective sweeps cannot prune (use none)",
    ),
    (
        {"pruning": {"algorithm": "asha", "grace_steps": 50, "reduction_factor": 1}},
        "pruning.reduction_factor: must be >= 2 (got 1)",
    ),
    ({"resources": {"gpus": 1.5}}, "resources.gpus: fractional only below 1 (got 1.5)"),
    ({"resources": {"cpus": 0}}, "resources.cpus: must be > 0 (got 0)"),
    ({"seeds": [0, 0]}, "seeds: must be distinct (got [0, 0])"),
    ({"seeds": []}, "seeds: List should have at least 1 item after validation, not 0 (got [])"),
    ({"checkpoint_every": 75}, "checkpoint_every: must be a multiple of report_every (50) (got 75)"),
    ({"experiment": "nope"}, "experiment: unknown experiment 'nope'; known:"),
    ({"experiment": "missing.yaml"}, "experiment: missing.yaml: no such file"),
]


@pytest.mark.parametrize(("changes", "expected"), BAD, ids=[e.split(":")[0] for _, e in BAD])
def test_bad_files_fail_in_one_line_naming_the_field(tmp_path: Path, changes: dict, expected: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {expected}"), msg


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: line 2 not valid YAML"):
        load_spec(write(tmp_path, "a: [1\nb: 2\n"))
    with pytest.raises(ConfigError, match=r"x.yaml: expected a mapping of sweep keys"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))


def test_experiment_path_relative_to_the_sweep_file(tmp_path: Path) -> None:
    exp = yaml.safe_load((Path(__file__).parents[2] / "apd/experiments/tms-5-2.yaml").read_text())
    (tmp_path / "cfgs").mkdir()
    write(tmp_path / "cfgs", exp, "mine.yaml")
    sweep = load_spec(write(tmp_path, with_(experiment="cfgs/mine.yaml")))
    assert sweep.experiment_path == tmp_path / "cfgs/mine.yaml"
    assert sweep.resolved_dict()["experiment"] == str((tmp_path / "cfgs/mine.yaml").resolve())


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, with_(parameters__topk__low=-1))
    res = subprocess.run(
        [sys.executable, "-m", "apd.sweep", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr == f"error: {path}: parameters.topk.low: must be > 0 (got -1)\n"
    assert not (tmp_path / "o").exists()  # nothing launched, nothing written


def test_grid_points_respect_conditions() -> None:
    from apd.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "experiment": "tms-5-2",
            "objective": {"metric": "mmcs", "mode": "max"},
            "search": {"algorithm": "grid"},
            "parameters": {
                "unit_norm_matrices": {"type": "categorical", "values": [False, True]},
                "init_scale": {
                    "type": "uniform",
                    "low": 1.0,
                    "high": 2.0,
                    "step": 0.5,
                    "when": {"unit_norm_matrices": True},
                },
                "C": {"type": "int", "low": 5, "high": 7, "step": 2},
            },
        }
    )
    points = grid_points(spec.parameters)
    # unit_norm False: 2 values of C; True: 3 init scales x 2 values of C
    assert len(points) == 2 + 6
    assert {"unit_norm_matrices": False, "C": 5} in points
    assert {"unit_norm_matrices": True, "init_scale": 1.5, "C": 7} in points
    assert all(("init_scale" in p) == p["unit_norm_matrices"] for p in points)


def test_grid_parameters_cross_each_draw() -> None:
    from apd.sweep.spec import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "experiment": "tms-5-2",
            "objective": {"metric": "mmcs", "mode": "max"},
            "parameters": {
                "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
                "C": {"type": "grid", "values": [5, 6]},
                "m": {"type": "grid", "values": [1, 2], "when": {"C": 6}},
            },
        }
    )
    combos = grid_combos(spec.parameters, {"lr": 0.01})
    assert combos == [{"C": 5}, {"C": 6, "m": 1}, {"C": 6, "m": 2}]


def test_corners_fall_back_to_one_at_a_time() -> None:
    from apd.sweep.spec import SweepSpec

    params = {"eval.mmcs_min": {"type": "uniform", "low": 0.5, "high": 0.9}}
    params |= {k: {"type": "categorical", "values": list(range(8))} for k in ("C", "m", "eval.scrub_batches", "steps")}
    spec = SweepSpec.model_validate(
        {"experiment": "x", "objective": {"metric": "mmcs", "mode": "max"}, "parameters": params}
    )
    points = list(corner_points(spec.parameters))
    # 2 * 8**4 = 8192 > 512 combinations: each parameter varied alone around the first corner
    assert len(points) == 2 + 4 * 8


def test_setting_id_ignores_order_and_separates_values() -> None:
    assert setting_id({"a": 1, "b": 0.5}) == setting_id({"b": 0.5, "a": 1})
    assert setting_id({"a": 1}) != setting_id({"a": 2})
    assert len(setting_id({})) == 10


SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweeps_are_valid(path: Path) -> None:
    sweep = load_spec(path)
    assert sweep.name == path.stem
    assert len(sweep.spec.seeds) >= 3  # the recovery verdict needs at least 3 seeds per setting
    if path.stem == "quickstart":
        assert sweep.total_trials == 9 and sweep.max_steps == 3000
    elif path.stem.startswith("compare-apd-"):  # the APD half of the APD/SPD comparison: a quarter of the
        # paper's steps, the paper's top-k times 1/4 ... 4
        assert sweep.max_steps == 5000 and sweep.total_trials == 15
        assert sorted(sweep.spec.parameters["topk"].values) == pytest.approx([0.211 * r for r in (0.25, 0.5, 1, 2, 4)])
    elif path.stem.startswith("compare-spd-"):  # SPD's half: APD's data budget (5 000 x 2 048), beta3 x 1/4 ... 4
        assert sweep.max_steps == 5000 and sweep.spec.fixed["batch_size"] == 2048
        assert sweep.total_trials == 15 and sweep.spec.max_concurrent == 2
        values = sorted(sweep.spec.parameters["importance_minimality_coeff"].values)
        assert values == pytest.approx([3e-3 * r for r in (0.25, 0.5, 1, 2, 4)])
        assert sweep.spec.fixed["eval.figures"] is False
    elif path.stem.startswith("spd-"):  # SPD seed sweeps: the experiment's own (paper) setting over seeds
        assert sweep.spec.experiment == path.stem
        (beta,) = sweep.spec.parameters["importance_minimality_coeff"].values
        assert beta == load_config(path.stem).importance_minimality_coeff  # type: ignore[attr-defined]
        assert sweep.max_steps == load_config(path.stem).steps
    else:  # paper experiments at the paper's step counts, searching top-k and the loss coefficients
        assert "topk" in sweep.spec.parameters
        assert sweep.max_steps >= 10_000


def test_all_paper_experiments_have_a_sweep() -> None:
    names = {p.stem for p in SWEEPS}
    assert {"quickstart", "tms-5-2", "tms-40-10", "tms-5-2-id", "resid-mlp-1", "resid-mlp-2", "resid-mlp-3"} <= names
    spd = {p.stem for p in (Path(__file__).parents[2] / "apd" / "experiments").glob("spd-*.yaml")}
    assert spd and spd <= names  # every SPD experiment has its seed sweep


TARGETS = "tms-5-2, tms-40-10, tms-5-2-id, tms-40-10-id, resid-mlp-1, resid-mlp-2, resid-mlp-3, gated-4"
EXACT = [
    # bounds and every float setting finite, each reported under its own name
    ({"parameters__topk__high": float("inf")}, "parameters.topk.high: Input should be a finite number (got inf)"),
    ({"parameters__topk__low": float("nan")}, "parameters.topk.low: Input should be a finite number (got nan)"),
    ({"parameters__topk__step": float("inf")}, "parameters.topk.step: Input should be a finite number (got inf)"),
    ({"resources": {"cpus": float("inf")}}, "resources.cpus: Input should be a finite number (got inf)"),
    ({"fixed__lr": float("inf")}, "fixed.lr: Input should be a finite number (got inf)"),
    (
        {"parameters__C": {"type": "categorical", "values": [5, float("nan")]}},
        "parameters.C.values.1: expected a string, a finite number, a boolean or null (got nan)",
    ),
    ({"seeds": [0, True]}, "seeds.1: must be a number, not a boolean (got True)"),
    # sections and keys
    ({"search": "tpe"}, "search: expected a mapping (got 'tpe')"),
    ({"fixed__target": 3}, "fixed.target: expected a mapping (got 3)"),
    ({"fixed__target..name": "x"}, "fixed.target..name: a dotted key with an empty part"),
    ({"experiment": ""}, "experiment: empty experiment name (give a registered one, see `apd list`, or a config YAML)"),
    # top-k above C
    (
        {"parameters__topk": {"type": "categorical", "values": [0.2, 10]}},
        "parameters.topk.values.1: must be <= C (5): batch top-k keeps int(topk * batch_size) of batch_size * C "
        "attributions (got 10) (at topk=10)",
    ),
    # typos get the closest known key or name
    ({"max_concurent": 2}, "max_concurent: unknown key; did you mean 'max_concurrent'?"),
    ({"search__algoritm": "tpe"}, "search.algoritm: unknown key; did you mean 'search.algorithm'?"),
    ({"parameters__topk__hihg": 0.3}, "parameters.topk.hihg: unknown key; did you mean 'parameters.topk.high'?"),
    (
        {"parameters__schatten_coef": {"type": "uniform", "low": 0.1, "high": 1.0}},
        "parameters.schatten_coef: unknown key; did you mean 'schatten_coeff'?",
    ),
    ({"fixed__eval": {"mmcs_mn": 0.9}}, "fixed.eval.mmcs_mn: unknown key; did you mean 'eval.mmcs_min'?"),
    (
        {"parameters__topk__type": "unifrom"},
        "parameters.topk: unknown type 'unifrom'; one of categorical, grid, uniform, loguniform, int; did you mean "
        "'uniform'?",
    ),
    (
        {"parameters__attribution_type": {"type": "categorical", "values": ["gradiant"]}},
        "parameters.attribution_type.values.0: Input should be 'gradient', 'gradient_apd', 'activation' or "
        "'ablation' (got 'gradiant'); did you mean 'gradient'?",
    ),
    (
        {"fixed__target.name": "tms-5-3"},
        f"fixed.target.name: unknown target 'tms-5-3'; did you mean 'tms-5-2'? known: {TARGETS}",
    ),
    (
        {"pruning": {"algorithm": "asha", "grace_steps": 50, "metric": "total_los"}},
        "pruning.metric: must be a step metric, one of total_loss, faithfulness_loss, topk_recon_loss, "
        "act_recon_loss, schatten_loss, lp_sparsity_loss, out_recon_loss, mean_active, lr (got 'total_los'); "
        "did you mean 'total_loss'?",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), EXACT, ids=[e.split(":")[0] for _, e in EXACT])
def test_bad_files_exact_message(tmp_path: Path, changes: dict, expected: str) -> None:
    path = write(tmp_path, with_(**changes))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {expected}"


def test_unknown_names_suggest_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, with_(experiment="tms-5-3"))
    with pytest.raises(ConfigError, match=r"x\.yaml: experiment: unknown experiment 'tms-5-3'; did you mean 'tms-5-2'"):
        load_spec(path)
    path = write(tmp_path, with_(objective={"metric": "mmc", "mode": "max"}))
    with pytest.raises(ConfigError, match=r"x\.yaml: objective\.0\.metric: unknown metric 'mmc'; did you mean 'mmcs'"):
        load_spec(path)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False) + "search: {algorithm: random, n_trials: 8}\n"
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("search:"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: line {len(text.splitlines())}: duplicate key 'search' (first on line {first})"


def test_unreadable_sweep_and_experiment_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    cases = {
        garbage: f"{garbage}: not a YAML text file (invalid UTF-8 at byte 0)",
        folder: f"{folder}: is a directory, not a YAML file",
    }
    for bad, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_spec(bad)
        assert str(info.value) == expected
        sweep = write(tmp_path, with_(experiment=bad.name))  # resolved next to the sweep file
        with pytest.raises(ConfigError) as info:
            load_spec(sweep)
        assert str(info.value) == f"{sweep}: experiment: {expected}"
    locked = write(tmp_path, BASE, "locked.yaml")
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # tests may run as root, where chmod 000 does not stop a read
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError) as info:
        load_spec(locked)
    assert str(info.value) == f"{locked}: cannot read (Permission denied)"


def test_target_files_are_named_with_the_sweep_field(tmp_path: Path) -> None:
    missing = tmp_path / "hand" / "nope.npz"
    path = write(tmp_path, with_(fixed={"steps": 200, "target.name": None, "target.path": str(missing)}))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: fixed.target.path: {missing}: no such file"
    good = tmp_path / "good.pt"
    good.write_bytes(b"")
    swept = {"type": "categorical", "values": [str(good), str(missing)]}
    path = write(tmp_path, with_(fixed={"steps": 200, "target.name": None}, parameters={"target.path": swept}))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: parameters.target.path.values.1: {missing}: no such file"


def test_a_broken_target_file_is_named_with_the_sweep_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from apd.cli import main

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    path = write(tmp_path, with_(fixed={"steps": 200, "target.name": None, "target.path": str(broken)}))
    code = main(["sweep", str(path), "--engine", "inline", "--no-tracking", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: fixed.target.path: {broken}: "), err
    assert not (tmp_path / "o").exists()


def test_out_must_be_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from apd.cli import main

    afile = (tmp_path / "afile").resolve()
    afile.write_text("")
    path = write(tmp_path, BASE)
    for out, expected in (
        (afile, f"{afile}: not a folder (--out)"),
        (afile / "o", f"{afile / 'o'}: cannot create a folder in {afile} (--out)"),
    ):
        assert main(["sweep", str(path), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"error: {expected}\n"
