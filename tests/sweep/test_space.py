"""The define-by-run space: every distribution, conditions, grid parameters and seed replicas."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from apd.sweep.space import DRAW_ATTR, SEED_ATTR, enqueue_grid, make_pruner, make_sampler, make_space, pruning_sign
from apd.sweep.spec import ValidatedSweep, setting_id, validate_spec

EVERY = {
    "experiment": "tms-5-2",
    "fixed": {"steps": 200, "batch_size": 256},
    "objective": {"metric": "mmcs", "mode": "max"},
    "search": {"algorithm": "random", "n_trials": 30, "seed": 3},
    "parameters": {
        "attribution_type": {"type": "categorical", "values": ["gradient", "gradient_apd"]},
        "topk": {"type": "uniform", "low": 0.2, "high": 0.3},
        "init_scale": {"type": "uniform", "low": 0.5, "high": 2.0, "step": 0.5},
        "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
        "C": {"type": "int", "low": 5, "high": 9, "step": 2},
        "target.feature_probability": {"type": "uniform", "low": 0.01, "high": 0.1},
        "unit_norm_matrices": {"type": "categorical", "values": [False, True]},
        "m": {"type": "int", "low": 1, "high": 8, "log": True, "when": {"unit_norm_matrices": True}},
    },
}


def sweep_of(data: dict) -> ValidatedSweep:
    return validate_spec(data, source="test.yaml", base_dir=Path("."))


def run_space(sweep: ValidatedSweep, n: int, study: optuna.Study | None = None) -> list[optuna.trial.FrozenTrial]:
    study = study or optuna.create_study(sampler=make_sampler(sweep), directions=["maximize"])
    space = make_space(sweep)
    for _ in range(n):
        trial = study.ask()
        point = space(trial)["apd"]
        study.tell(trial, 0.5)
        assert point["params"] == trial.params
    return study.get_trials()


def test_every_distribution_is_translated() -> None:
    sweep = sweep_of(EVERY)
    trials = run_space(sweep, 30)
    dists = {k: v for t in trials for k, v in t.distributions.items()}
    assert dists["attribution_type"] == CategoricalDistribution(["gradient", "gradient_apd"])
    assert dists["topk"] == FloatDistribution(0.2, 0.3)
    assert dists["init_scale"] == FloatDistribution(0.5, 2.0, step=0.5)
    assert dists["lr"] == FloatDistribution(1e-3, 1e-1, log=True)
    assert dists["C"] == IntDistribution(5, 9, step=2)
    assert dists["target.feature_probability"] == FloatDistribution(0.01, 0.1)
    assert dists["m"] == IntDistribution(1, 8, log=True)
    values = {k: {t.params[k] for t in trials if k in t.params} for k in dists}
    assert values["C"] <= {5, 7, 9} and values["init_scale"] <= {0.5, 1.0, 1.5, 2.0}
    assert all(1e-3 <= v <= 1e-1 for v in values["lr"])
    # the conditional parameter exists exactly when its condition holds
    assert all(("m" in t.params) == t.params["unit_norm_matrices"] for t in trials)
    assert 0 < sum("m" in t.params for t in trials) < 30
    # every sampled point is a valid config
    for t in trials:
        assert t.params["C"] == sweep.config(t.params, 0).C


def test_seeds_replicate_each_draw() -> None:
    sweep = sweep_of({**EVERY, "seeds": [0, 1, 2], "search": {"algorithm": "tpe", "n_trials": 3}})
    assert sweep.total_trials == 9
    trials = run_space(sweep, 9)
    # asks come out in groups: a fresh draw, then its queued replicas
    groups = Counter(t.user_attrs[DRAW_ATTR] for t in trials)
    assert groups == {0: 3, 3: 3, 6: 3}
    for draw in groups:
        members = [t for t in trials if t.user_attrs[DRAW_ATTR] == draw]
        assert sorted(t.user_attrs[SEED_ATTR] for t in members) == [0, 1, 2]
        assert len({setting_id(t.params) for t in members}) == 1


def test_grid_parameters_run_every_value_per_draw() -> None:
    params = {
        "lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
        "C": {"type": "grid", "values": [5, 6]},
        "m": {"type": "grid", "values": [1, 2], "when": {"C": 6}},
    }
    sweep = sweep_of({**EVERY, "parameters": params, "seeds": [0, 1], "search": {"algorithm": "random", "n_trials": 2}})
    # (C=5) + (C=6, m=1) + (C=6, m=2) = 3 combinations x 2 seeds per draw
    assert (sweep.group_size, sweep.total_trials) == (6, 12)
    trials = run_space(sweep, 12)
    for draw in {t.user_attrs[DRAW_ATTR] for t in trials}:
        members = [t for t in trials if t.user_attrs[DRAW_ATTR] == draw]
        assert len({t.params["lr"] for t in members}) == 1
        combos = Counter((t.params["C"], t.params.get("m"), t.user_attrs[SEED_ATTR]) for t in members)
        assert set(combos) == {(c, m, s) for c, m in [(5, None), (6, 1), (6, 2)] for s in (0, 1)}


def test_grid_search_enqueues_every_point_and_seed() -> None:
    params = {
        "C": {"type": "categorical", "values": [5, 6]},
        "topk": {"type": "uniform", "low": 0.2, "high": 0.3, "step": 0.05},
        "schatten_coeff": {"type": "grid", "values": [0.5, 1.0]},
    }
    sweep = sweep_of({**EVERY, "parameters": params, "seeds": [0, 1], "search": {"algorithm": "grid"}})
    assert (sweep.n_draws, sweep.total_trials) == (12, 24)
    study = optuna.create_study(sampler=make_sampler(sweep), direction="maximize")
    enqueue_grid(study, sweep)
    trials = run_space(sweep, 24, study)
    seen = Counter((t.params["C"], round(t.params["topk"], 6), t.params["schatten_coeff"]) for t in trials)
    assert len(seen) == 12 and set(seen.values()) == {2}
    assert {t.user_attrs[SEED_ATTR] for t in trials} == {0, 1}


def test_pruner_and_sign() -> None:
    sweep = sweep_of({**EVERY, "pruning": {"algorithm": "asha", "grace_steps": 40, "reduction_factor": 3}})
    pruner = make_pruner(sweep)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (40, 3)
    # maximise mmcs while pruning on total_loss (min): Optuna must see -loss
    assert pruning_sign(sweep) == -1.0
    assert pruning_sign(sweep_of({**EVERY, "objective": {"metric": "total_loss", "mode": "min"}})) == 1.0
    assert isinstance(make_pruner(sweep_of(EVERY)), optuna.pruners.NopPruner)


@pytest.mark.parametrize(
    ("algorithm", "kind"),
    [("tpe", "TPESampler"), ("random", "RandomSampler"), ("cmaes", "CmaEsSampler"), ("nsga2", "NSGAIISampler")],
)
def test_samplers(algorithm: str, kind: str) -> None:
    sweep = sweep_of({**EVERY, "search": {"algorithm": algorithm, "n_trials": 4, "seed": 1}})
    assert type(make_sampler(sweep)).__name__ == kind
