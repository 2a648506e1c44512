"""Re-judging stored trials with other thresholds (through apd.metrics.verdict.decide)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from apd.analysis import add_outcomes, failure_counts, load_trials, rejudge, settings_table
from apd.errors import ConfigError


def test_rejudge_with_defaults_reproduces_the_stored_verdict(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    again = rejudge(trials, {})
    assert again["recovered_all"].tolist() == trials["recovered_all"].fillna(False).astype(bool).tolist()
    done = trials["status"] == "COMPLETE"
    for col in [c for c in trials.columns if c.startswith("metric.check_")]:
        assert again.loc[done, col].map(list).tolist() == trials.loc[done, col].map(list).tolist(), col


def test_stricter_mmcs_and_looser_split_thresholds_change_the_counts(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    # recovered trials have MMCS 0.998 + 0.0005 * seed: only seed 2 reaches 0.999 -> no setting on 3 seeds
    strict = settings_table(rejudge(trials, {"mmcs_min": 0.999}))
    assert strict["n_recovered"].sum() == 2 and not strict["recovers"].any()
    # the low-ML2R trials are splits (ML2R 0.6, split share 0.4, norm ratio 0.6): a looser ML2R alone
    # does not save them, a verdict that tolerates the split too does
    assert settings_table(rejudge(trials, {"ml2r_min": 0.55}))["recovers"].sum() == 2
    loose = settings_table(rejudge(trials, {"ml2r_min": 0.55, "split_max": 0.5, "mechanism_norm_min": 0.55}))
    good = loose[loose["recovers"]]
    assert sorted(zip(good["param.topk"], good["param.schatten_coeff"], strict=True)) == [
        (0.2, 0.1),
        (0.2, 1.0),
        (0.3, 0.1),
        (0.3, 1.0),
    ]


def test_bad_threshold_names_the_field_and_missing_metrics_fail(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep())
    with pytest.raises(ConfigError, match="mmcs_minn"):
        rejudge(trials, {"mmcs_minn": 0.9})
    # without the stored split shares every completed instance fails the split check, and says so
    again = add_outcomes(rejudge(trials.drop(columns=["metric.split_share_per_instance"]), {}))
    counts = failure_counts(again).set_index("mode")["instances"]
    assert counts["split features"] == int((trials["status"] == "COMPLETE").sum()) and not again["success"].any()


def test_a_family_this_checkout_does_not_know_names_the_trial(make_sweep: Callable[..., Path]) -> None:
    trials = load_trials(make_sweep()).assign(family="spd-only")
    with pytest.raises(ConfigError, match=r"trial t0000: unknown target family 'spd-only'; known: tms"):
        rejudge(trials, {})
