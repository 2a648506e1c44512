"""Settings, instance-level success rates and failure modes on hand-made frames (counts derived in the comments)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from apd.analysis import add_outcomes, failure_counts, format_rate, instances, rate_by, settings_table, with_setting_ids
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
    # one instance per trial (only the trial verdict is known):
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
    # default rule: >= 90% of the instances on >= 3 seeds -> only topk 0.2
    assert table["recovers"].to_dict() == {0.2: True, 0.3: False, 0.5: False}
    # 2/3 >= 0.6 of 3 seeds -> topk 0.3 too; 1/2 has too few seeds
    loose = settings_table(_frame(), share=0.6).set_index("param.topk")["recovers"].to_dict()
    assert loose == {0.2: True, 0.3: True, 0.5: False}
    # with min_seeds 2, 1/2 >= 0.5 -> topk 0.5 recovers at share 0.5
    assert settings_table(_frame(), share=0.5, min_seeds=2)["recovers"].all()


def _instances_frame() -> pd.DataFrame:
    # three settings of a 4-instance target, 3 seeds each (the per-instance verdicts are stored):
    # A: 4 + 4 + 3 = 11/12 recovered instances, 2/3 seeds with every instance -> recovers at 0.9 (11 >= 10.8)
    # B: 4 + 4 + 2 = 10/12 -> not at 0.9 (10 < 10.8), yes at 0.8 (10 >= 9.6)
    # C: 4 + 4 + a DIVERGED seed (its 4 instances fail) = 8/12
    per = {
        "A": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]],
        "B": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]],
        "C": [[1, 1, 1, 1], [1, 1, 1, 1], None],
    }
    rows = []
    for setting, seeds in per.items():
        for seed, rec in enumerate(seeds):
            status = "COMPLETE" if rec is not None else "DIVERGED"
            metrics = {
                "metric.family": "tms",
                "metric.recovered_per_instance": rec,
                "metric.check_mmcs_per_instance": rec,
                "metric.check_split_per_instance": [1, 1, 1, 1] if rec is None or setting != "B" else [1, 0, 1, 0],
            }
            ok = rec is not None and all(rec)
            rows.append(
                _trial(f"{setting}{seed}", {"A": 0.2, "B": 0.3, "C": 0.4}[setting], seed, status, ok, n_instances=4)
                | metrics
                | {"family": "tms", "setting_id": setting, "out": "o"}
            )
    return pd.DataFrame(rows)


def test_instance_level_counting() -> None:
    table = settings_table(_instances_frame()).set_index("setting_id")
    assert table["recovery"].to_dict() == {"A": "11/12", "B": "10/12", "C": "8/12"}
    assert table["trials_recovery"].to_dict() == {"A": "2/3", "B": "2/3", "C": "2/3"}
    assert table["n_instances"].tolist() == [12, 12, 12]
    assert table["rate"].round(4).to_dict() == {"A": 0.9167, "B": 0.8333, "C": 0.6667}
    assert table["recovers"].to_dict() == {"A": True, "B": False, "C": False}
    assert settings_table(_instances_frame(), share=0.8).set_index("setting_id")["recovers"].to_dict() == {
        "A": True,
        "B": True,
        "C": False,
    }
    assert settings_table(_instances_frame(), share=1.0)["recovers"].sum() == 0


def test_failure_modes_are_multi_label_per_instance() -> None:
    df = add_outcomes(_instances_frame())
    # A2's 4th instance fails MMCS; B2's 2nd and 4th fail both MMCS and the split check (two labels
    # each); C2 diverged: its 4 instances count as diverged
    counts = failure_counts(df).set_index("mode")
    assert counts["instances"].to_dict() == {"diverged": 4, "low MMCS": 3, "split features": 2}
    assert counts["trials"].to_dict() == {"diverged": 1, "low MMCS": 2, "split features": 1}
    b2 = df.set_index("trial_id").loc["B2"]
    assert b2["instance_modes"] == [(), ("low MMCS", "split features"), (), ("low MMCS", "split features")]
    assert b2["failure_modes"] == ["low MMCS", "split features"] and b2["outcome"] == "partly recovered"
    inst = instances(df)
    assert len(inst) == 36 and int(inst["success"].sum()) == 29


def test_rate_by_parameter_counts_instances() -> None:
    rates = rate_by(add_outcomes(_instances_frame()), ["param.topk"]).set_index("param.topk")
    assert rates["recovery"].to_dict() == {0.2: "11/12", 0.3: "10/12", 0.4: "8/12"}
    assert rates["n_trials"].to_dict() == {0.2: 3, 0.3: 3, 0.4: 3}
    assert format_rate(0, 4) == "0/4"


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
    assert df.loc["b2", "failure_modes"] == ["diverged"] and df.loc["a0", "failure_modes"] == []


def _boundary_frame() -> pd.DataFrame:
    # one-instance trials of a TMS, 2 seeds per topk: 0.1 fails by non-distinct matching (both seeds,
    # one also by low MMCS), 0.2 recovers, 0.3 fails by split features (both) and low MMCS (one)
    rows = []
    for topk, checks in {
        0.1: [{"one_to_one": 0, "mmcs": 0, "split": 1}, {"one_to_one": 0, "mmcs": 1, "split": 1}],
        0.2: [{"one_to_one": 1, "mmcs": 1, "split": 1}] * 2,
        0.3: [{"one_to_one": 1, "mmcs": 0, "split": 0}, {"one_to_one": 1, "mmcs": 1, "split": 0}],
    }.items():
        for seed, c in enumerate(checks):
            ok = all(c.values())
            metrics = {f"metric.check_{k}_per_instance": [v] for k, v in c.items()}
            metrics |= {"metric.family": "tms", "metric.recovered_per_instance": [int(ok)]}
            extra = {"n_instances": 1, "family": "tms", "out": "o"}
            rows.append(_trial(f"t{topk}{seed}", topk, seed, "COMPLETE", ok, **extra) | metrics)
    return pd.DataFrame(rows)


def test_the_answer_says_how_failures_differ_on_either_side_of_the_best_setting() -> None:
    from apd.analysis._answer import why_phrase

    df = add_outcomes(with_setting_ids(_boundary_frame()))
    table = settings_table(df, min_seeds=2)
    # low MMCS fails on both sides (1/2 each: no excess), so each side names its own mode
    assert why_phrase(df, table, ["param.topk"]) == (
        " Below topk 0.2, instances fail mostly by non-distinct matching (2/2); above 0.2, by split features (2/2)."
    )
    assert why_phrase(df, table, []) == ""  # no numeric parameter ranked: nothing to say


def test_the_boundary_sides_lie_outside_the_whole_recovering_band() -> None:
    from apd.analysis._answer import why_phrase

    frame = _boundary_frame()
    # a second recovering setting at topk 0.25: the band is [0.2, 0.25], "above" starts past 0.25
    extra = frame[frame["param.topk"] == 0.2].copy()
    extra["param.topk"] = 0.25
    extra["trial_id"] = extra["trial_id"] + "b"
    df = add_outcomes(with_setting_ids(pd.concat([frame, extra], ignore_index=True)))
    table = settings_table(df, min_seeds=2)
    assert why_phrase(df, table, ["param.topk"]).endswith("above 0.25, by split features (2/2).")
    # the same single mode on both sides says nothing about the boundary
    same = frame.copy()
    for col in ("metric.check_split_per_instance", "metric.check_mmcs_per_instance"):
        same.loc[same["param.topk"] != 0.2, col] = same.loc[same["param.topk"] != 0.2, col].apply(lambda _: [1])
    same.loc[same["param.topk"] != 0.2, "metric.check_one_to_one_per_instance"] = same.loc[
        same["param.topk"] != 0.2, "metric.check_one_to_one_per_instance"
    ].apply(lambda _: [0])
    df = add_outcomes(with_setting_ids(same))
    assert why_phrase(df, settings_table(df, min_seeds=2), ["param.topk"]) == ""
