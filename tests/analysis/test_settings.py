"""Settings, success rates and failure modes on hand-made frames (counts derived in the comments)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from apd.analysis import add_outcomes, format_rate, rate_by, settings_table, with_setting_ids
from apd.analysis._outcomes import resid_failure, tms_failure
from apd.config import EvalConfig
from apd.errors import ConfigError


def _trial(tid: str, topk: float, seed: int, status: str = "COMPLETE", ok: bool = False, **extra: Any) -> dict:
    return {
        "trial_id": tid,
        "experiment": "tms-5-2",
        "status": status,
        "seed": seed,
        "param.topk": topk,
        "recovered": float(ok),
        "recovered_all": ok,
        **extra,
    }


def _frame() -> pd.DataFrame:
    # topk 0.2: seeds 0,1,2 recover -> 3/3 (a 4th seed FAILED: not judged)
    # topk 0.3: seeds 0,1 recover, seed 2 DIVERGED -> 2/3
    # topk 0.5: seed 0 recovers, seed 1 PRUNED, seed 2 RUNNING -> 1/2 (too few seeds for the rule)
    rows = [
        _trial("a0", 0.2, 0, ok=True),
        _trial("a1", 0.2, 1, ok=True),
        _trial("a2", 0.2, 2, ok=True),
        _trial("a3", 0.2, 3, status="FAILED"),
        _trial("b0", 0.3, 0, ok=True),
        _trial("b1", 0.3, 1, ok=True),
        _trial("b2", 0.3, 2, status="DIVERGED"),
        _trial("c0", 0.5, 0, ok=True),
        _trial("c1", 0.5, 1, status="PRUNED"),
        _trial("c2", 0.5, 2, status="RUNNING"),
    ]
    return pd.DataFrame(rows)


def test_settings_group_seeds_and_count_judged_trials() -> None:
    table = settings_table(_frame()).set_index("param.topk")
    assert table.loc[0.2, ["n_trials", "n_judged", "n_recovered", "n_failed"]].tolist() == [4, 3, 3, 1]
    assert table.loc[0.3, ["n_judged", "n_recovered", "n_diverged"]].tolist() == [3, 2, 1]
    assert table.loc[0.5, ["n_judged", "n_recovered", "n_pruned", "n_running"]].tolist() == [2, 1, 1, 1]
    assert table["recovery"].to_dict() == {0.2: "3/3", 0.3: "2/3", 0.5: "1/2"}
    assert table.loc[0.2, "seeds"] == [0, 1, 2]
    # default rule: all seeds, at least 3 -> only topk 0.2
    assert table["recovers"].to_dict() == {0.2: True, 0.3: False, 0.5: False}
    # 2/3 >= 0.6 of 3 seeds -> topk 0.3 too; 1/2 has too few seeds
    loose = settings_table(_frame(), share=0.6).set_index("param.topk")["recovers"].to_dict()
    assert loose == {0.2: True, 0.3: True, 0.5: False}
    # with min_seeds 2, 1/2 >= 0.5 -> topk 0.5 recovers at share 0.5
    assert settings_table(_frame(), share=0.5, min_seeds=2)["recovers"].all()


def test_settings_sorted_best_first() -> None:
    table = settings_table(_frame(), share=0.6)
    assert table["param.topk"].tolist() == [0.2, 0.3, 0.5]


def test_setting_id_derived_from_params_without_seed() -> None:
    df = _frame().drop(columns=["experiment"])
    df["param.seed"] = df["seed"]  # a seed parameter never splits a setting
    ids = with_setting_ids(df.drop(columns=["seed"])).groupby("param.topk")["setting_id"].nunique()
    assert ids.tolist() == [1, 1, 1]
    assert with_setting_ids(df)["setting_id"].nunique() == 3


def test_rule_is_checked() -> None:
    with pytest.raises(ConfigError, match="share"):
        settings_table(_frame(), share=0.0)
    with pytest.raises(ConfigError, match="min_seeds"):
        settings_table(_frame(), min_seeds=0)


def test_rate_by_parameter_counts_judged_trials() -> None:
    rates = rate_by(add_outcomes(_frame()), ["param.topk"]).set_index("param.topk")
    assert rates["recovery"].to_dict() == {0.2: "3/3", 0.3: "2/3", 0.5: "1/2"}
    assert format_rate(0, 4) == "0/4"


def test_outcomes() -> None:
    df = add_outcomes(_frame()).set_index("trial_id")
    assert df.loc[["a0", "a3", "b2", "c1", "c2"], "outcome"].astype(str).tolist() == [
        "recovered",
        "failed",
        "diverged",
        "pruned",
        "running",
    ]
    assert df["judged"].sum() == 8
    assert df.loc["b2", "failure_mode"] == "diverged" and pd.isna(df.loc["a0", "failure_mode"])


def _tms_row(mmcs: float, ml2r: float, distinct: float, n_features: float = 5.0) -> pd.Series:
    return pd.Series(
        {
            "metric.mmcs": mmcs,
            "metric.mmcs_per_instance": [mmcs, 0.999],
            "metric.ml2r_per_instance": [ml2r, 0.9],
            "metric.n_distinct_per_instance": [distinct, 5.0],
            "metric.n_features": n_features,
        }
    )


def test_tms_failure_modes_follow_the_verdict_order() -> None:
    ev = EvalConfig()  # mmcs >= 0.99, ml2r >= 0.8, one-to-one
    assert tms_failure(_tms_row(0.95, 0.5, 3), ev) == "low MMCS"  # MMCS is checked first
    assert tms_failure(_tms_row(0.995, 0.5, 3), ev) == "low ML2R"
    assert tms_failure(_tms_row(0.995, 0.85, 3), ev) == "non-distinct matching"
    assert tms_failure(_tms_row(0.995, 0.85, 3), EvalConfig(ml2r_max=0.84)) == "high ML2R"


def test_resid_failure_modes() -> None:
    ev = EvalConfig()  # dedicated >= 0.95, no non-mono dedicated, top-1 MSE <= 1, scrub ratio >= 10
    base = {
        "metric.dedicated_fraction_per_instance": [0.99],
        "metric.n_dedicated_not_mono_per_instance": [0.0],
        "metric.median_norm_top1_mse_per_instance": [0.5],
        "metric.scrub_ratio_per_instance": [20.0],
    }
    assert resid_failure(pd.Series(base | {"metric.dedicated_fraction_per_instance": [0.9]}), ev).startswith("shared")
    assert resid_failure(pd.Series(base | {"metric.n_dedicated_not_mono_per_instance": [2.0]}), ev).startswith("poly")
    assert resid_failure(pd.Series(base | {"metric.median_norm_top1_mse_per_instance": [3.0]}), ev).startswith("poor")
    assert resid_failure(pd.Series(base | {"metric.scrub_ratio_per_instance": [2.0]}), ev).startswith("weak")
