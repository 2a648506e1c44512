"""Re-judging stored trials with other thresholds (through apd.metrics.verdict.judge)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from apd.analysis import load_trials, rejudge, settings_table
from apd.errors import ConfigError


def test_rejudge_with_defaults_reproduces_the_stored_verdict(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    again = rejudge(trials, {})
    assert again["recovered_all"].tolist() == trials["recovered_all"].fillna(False).astype(bool).tolist()


def test_stricter_mmcs_and_looser_ml2r_change_the_counts(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    # recovered trials have MMCS 0.998 + 0.0005 * seed: only seed 2 reaches 0.999 -> no setting on all seeds
    strict = settings_table(rejudge(trials, {"mmcs_min": 0.999}))
    assert strict["n_recovered"].sum() == 2 and not strict["recovers"].any()
    # ML2R 0.6 passes 0.55: topk 0.2 and 0.3 at schatten 0.1 now recover on all 3 seeds too
    loose = settings_table(rejudge(trials, {"ml2r_min": 0.55}))
    good = loose[loose["recovers"]]
    assert sorted(zip(good["param.topk"], good["param.schatten_coeff"], strict=True)) == [
        (0.2, 0.1),
        (0.2, 1.0),
        (0.3, 0.1),
        (0.3, 1.0),
    ]


def test_bad_threshold_names_the_field(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    with pytest.raises(ConfigError, match="mmcs_minn"):
        rejudge(trials, {"mmcs_minn": 0.9})
    with pytest.raises(ConfigError, match=r"metric\.n_features"):
        rejudge(trials.drop(columns=["metric.n_features"]), {})
