"""Importances and Pareto fronts against real Optuna studies."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest

from apd.analysis import (
    importances_for_objectives,
    load_stored_study,
    pareto_front,
    recovery_importances,
    study_from_trials,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _frame(study: optuna.Study) -> pd.DataFrame:
    """Parquet-style rows of a study: param.* columns and objective(s)."""
    rows = []
    for t in study.trials:
        row = {"trial_id": f"t{t.number}", "status": "COMPLETE", **{f"param.{k}": v for k, v in t.params.items()}}
        if len(t.values) == 1:
            row["objective"] = t.values[0]
        else:
            row |= {f"objective.{i}": v for i, v in enumerate(t.values)}
        rows.append(row)
    return pd.DataFrame(rows)


def _single(trial: optuna.Trial) -> float:
    topk = trial.suggest_float("topk", 0.05, 1.0)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("attribution_type", ["gradient", "activation"])
    return (topk - 0.25) ** 2 + 1e-3 * math.log10(lr) ** 2  # topk matters most; the choice not at all


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    s.optimize(_single, n_trials=60)
    return s


def test_rebuilt_study_gives_optunas_own_importances(study: optuna.Study) -> None:
    direct = optuna.importance.get_param_importances(study)
    ranges = {"topk": study.trials[0].distributions["topk"], "lr": study.trials[0].distributions["lr"]}
    rebuilt = study_from_trials(_frame(study), directions=["minimize"], ranges=ranges)
    assert rebuilt.trials[0].distributions["lr"].log
    imp = importances_for_objectives(rebuilt, names=["loss"]).set_index("param")["importance"]
    assert imp.idxmax() == "param.topk"
    for name, value in direct.items():
        assert imp[f"param.{name}"] == pytest.approx(value, abs=0.02)


def test_recovery_importances_pick_the_parameter_that_separates(study: optuna.Study) -> None:
    df = _frame(study)
    df["recovered_all"] = (df["param.topk"] - 0.25).abs() < 0.15  # recovery is decided by topk alone
    imp = recovery_importances(df).set_index("param")["importance"]
    assert imp.idxmax() == "param.topk" and imp["param.topk"] > 0.5
    df["recovered_all"] = False  # nothing to separate
    assert recovery_importances(df).empty


def test_too_few_trials_give_no_importances(study: optuna.Study) -> None:
    one = study_from_trials(_frame(study).head(1), directions=["minimize"])
    assert importances_for_objectives(one).empty


def _two(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("topk", 0.0, 1.0)
    y = trial.suggest_float("schatten_coeff", 0.0, 1.0)
    return x + 0.1 * y, (1 - x) ** 2 + 0.1 * y


def test_pareto_front_matches_optuna_best_trials() -> None:
    s = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    s.optimize(lambda t: (lambda a, b: (a, -b))(*_two(t)), n_trials=40)
    front = pareto_front(_frame(s), ["objective.0", "objective.1"], ["minimize", "maximize"])
    assert set(front["trial_id"]) == {f"t{t.number}" for t in s.best_trials}
    assert 1 < len(front) < 40


def test_stored_study_loads_from_sqlite(tmp_path, study: optuna.Study) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = optuna.create_study(storage=storage, study_name="tms", sampler=optuna.samplers.RandomSampler(seed=0))
    s.add_trials(study.trials[:10])
    loaded = load_stored_study(tmp_path)
    assert loaded is not None and len(loaded.trials) == 10
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "optuna.db").write_text("not a database")
    assert load_stored_study(tmp_path / "other") is None
