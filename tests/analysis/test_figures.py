"""Sweep figures carry information at any size: binned (log where drawn log) parameters, notes on thin
evidence, distinct failure-mode colours, parallel coordinates."""

from __future__ import annotations

import numpy as np
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from apd.analysis import add_outcomes, settings_table
from apd.analysis.figures import (
    MIN_POINTS,
    binned,
    few_points_note,
    mode_palette,
    parallel_figure,
    recovery_map_figure,
)


def test_continuous_parameters_are_binned_log_where_drawn_log() -> None:
    lr = pd.Series([1e-4, 3e-4, 2e-3, 0.05, 0.09])
    # loguniform in [1e-4, 0.1]: 5 geometric bins, edges at decades' fractions (x 3.98)
    cats = binned(lr, dist=FloatDistribution(1e-4, 0.1, log=True))
    assert list(cats.cat.categories) == [
        "0.0001–0.000398",
        "0.000398–0.00158",
        "0.00158–0.00631",
        "0.00631–0.0251",
        "0.0251–0.1",
    ]
    assert cats.tolist() == ["0.0001–0.000398", "0.0001–0.000398", "0.00158–0.00631", "0.0251–0.1", "0.0251–0.1"]
    # the same values declared uniform: equal-width bins over [0, 0.1]
    assert binned(lr, dist=FloatDistribution(0.0, 0.1)).cat.categories[0] == "0–0.02"
    # a float range is binned even with few drawn values (never one cell per draw) ...
    assert len(binned(pd.Series([0.21, 0.22, 0.27]), dist=FloatDistribution(0.2, 0.3)).cat.categories) == 3
    # ... an int range of few values, a stepped float or a choice keeps its values
    assert list(binned(pd.Series([5, 7, 9]), dist=IntDistribution(5, 9, step=2)).cat.categories) == ["5", "7", "9"]
    assert list(binned(pd.Series([0.5, 1.0]), dist=FloatDistribution(0.5, 2.0, step=0.5)).cat.categories) == [
        "0.5",
        "1",
    ]
    assert list(binned(pd.Series(["a", "b"]), dist=CategoricalDistribution(["a", "b"])).cat.categories) == ["a", "b"]
    # a log int range of many values
    assert binned(pd.Series(range(1, 101)), dist=IntDistribution(1, 100, log=True)).cat.categories[1] == "2.51–6.31"


def test_failure_mode_colours_are_distinct() -> None:
    modes = ["recovered", "diverged", "pruned", *[f"mode {i}" for i in range(15)]]
    palette = mode_palette(modes)
    colours = {tuple(np.round(c, 3)) for c in palette.values()}
    assert len(colours) == len(modes)
    assert palette["recovered"] == mode_palette(["recovered", "x"])["recovered"]


def _trials(n: int) -> pd.DataFrame:
    rows = [
        {
            "out": "o",
            "trial_id": f"t{i}",
            "experiment": "e",
            "status": "COMPLETE",
            "seed": i % 3,
            "setting_id": f"s{i // 3}",
            "param.topk": 0.1 + 0.05 * (i // 3),
            "param.lr": 10 ** (-3 + (i % 4) / 2),
            "recovered": float(i % 2),
            "recovered_all": bool(i % 2),
            "n_instances": 1,
        }
        for i in range(n)
    ]
    return add_outcomes(pd.DataFrame(rows))


def test_maps_and_parallel_coordinates_say_when_points_are_few() -> None:
    assert few_points_note(MIN_POINTS) == "" and "only 3 judged trials" in few_points_note(3, "map")
    dists = {"lr": FloatDistribution(1e-3, 0.1, log=True), "topk": FloatDistribution(0.1, 0.5)}
    few = recovery_map_figure(_trials(6), "param.topk", "param.lr", dists)
    assert "only 6 judged trials: this map is anecdotal" in few.axes[0].get_title()
    assert any(p.get_hatch() == "///" for p in few.axes[0].patches)  # cells of 1 instance
    many = recovery_map_figure(_trials(30), "param.topk", "param.lr", dists)
    assert "anecdotal" not in many.axes[0].get_title() and many.axes[0].get_xlabel().startswith("topk")
    par = parallel_figure(settings_table(_trials(30), min_seeds=1), ["param.topk", "param.lr"], dists)
    ax = par.axes[0]
    assert ax.get_title().startswith("Settings across their parameters (10 settings)") and ax.get_xlabel()
    assert len(ax.lines) >= 10  # one line per setting (plus the axis rules)
