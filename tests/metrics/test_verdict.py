"""`decide` re-derives verdicts from stored numbers alone, names every failed check, and cannot be fooled
by missing or non-numeric metrics."""

from __future__ import annotations

from typing import Any

import pytest

from apd.config import EvalConfig
from apd.errors import ConfigError
from apd.metrics import decide, judge
from apd.metrics.keys import family_kind, metric_keys, objective_keys
from apd.metrics.verdict import rules

GOOD_TMS = {"mechanism_cos": 0.999, "mechanism_norm_min": 0.9, "mechanism_norm_max": 1.0, "split_share": 0.01}


def tms(**per_instance: list[Any]) -> dict[str, Any]:
    """Three TMS instances; every list defaults to a passing value."""
    lists = {
        "mmcs": [0.995, 0.999, 0.98],
        "ml2r": [0.9, 0.85, 0.95],
        "n_distinct": [5, 4, 5],
        **{k: [v] * 3 for k, v in GOOD_TMS.items()},
    }
    lists.update(per_instance)
    return {"family": "tms", "n_features": 5, "n_instances": 3, **{f"{k}_per_instance": v for k, v in lists.items()}}


RESID = {
    "family": "resid_mlp",
    "n_features": 100,
    "identity_error_per_instance": [4],
    "dedicated_fraction_per_instance": [0.96],
    "n_dedicated_not_mono_per_instance": [0],
    "median_norm_top1_mse_per_instance": [0.7],
    "scrub_ratio_per_instance": [12.0],
}


def test_tms_rejudge() -> None:
    # defaults: inst 0 passes; inst 1 has 4 distinct (not one-to-one); inst 2 MMCS 0.98 < 0.99
    assert judge(tms(), EvalConfig()) == {
        "recovered": 1 / 3,
        "recovered_all": False,
        "recovered_per_instance": [True, False, False],
        "check_mmcs_per_instance": [True, True, False],
        "check_ml2r_per_instance": [True, True, True],
        "check_one_to_one_per_instance": [True, False, True],
        "check_split_per_instance": [True, True, True],
        "check_mechanism_cos_per_instance": [True, True, True],
        "check_mechanism_norm_per_instance": [True, True, True],
    }
    assert judge(tms(), {"require_one_to_one": False})["recovered_per_instance"] == [True, True, False]
    assert judge(tms(), {"mmcs_min": 0.97, "require_one_to_one": False})["recovered_all"] is True
    assert judge(tms(), {"mmcs_min": 0.97, "ml2r_max": 0.92})["recovered_per_instance"] == [True, False, False]


def test_every_failed_check_is_named_and_mapped_to_its_mode() -> None:
    # instance 1 fails four checks at once: all four are named, in the family's order
    v = decide(tms(mmcs=[0.995, 0.9, 0.995], ml2r=[0.9, 0.5, 0.9], split_share=[0.0, 0.5, 0.0]), {})
    assert v.failed == ((), ("mmcs", "ml2r", "one_to_one", "split"), ())
    assert v.failure_modes()[1] == ["low MMCS", "low ML2R", "non-distinct matching", "split features"]
    assert v.checks == ("mmcs", "ml2r", "one_to_one", "split", "mechanism_cos", "mechanism_norm")
    # ml2r_max only judges when set; the hidden check only for targets with hidden layers
    assert "ml2r_max" in decide(tms(), {"ml2r_max": 1.1}).checks
    assert "hidden_identity" in decide({**tms(), "n_hidden_layers": 1}, {}).checks


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "0.999", True, [0.999], {"v": 1}])
def test_missing_or_non_numeric_values_fail_their_check(bad: Any) -> None:
    v = decide(tms(mmcs=[0.999, bad, 0.999], n_distinct=[5, 5, 5]), {})
    assert v.failed == ((), ("mmcs",), ()) and v.missing == ((), ("mmcs",), ())


def test_short_or_absent_lists_fail_instead_of_passing() -> None:
    short = decide(tms(mechanism_cos=[0.999], n_distinct=[5, 5, 5], mmcs=[0.999] * 3), {})
    assert short.failed == ((), ("mechanism_cos",), ("mechanism_cos",))
    no_split = tms(n_distinct=[5, 5, 5], mmcs=[0.999] * 3)
    del no_split["split_share_per_instance"]
    assert decide(no_split, {}).failed == (("split",),) * 3
    # unless the caller says the results predate the check (schema-1 results)
    assert decide(no_split, {}, measured_only=True).failed == ((), (), ())
    # a mean cannot stand in for a missing per-instance list
    assert decide({**no_split, "split_share": 0.0}, {}).failed == (("split",),) * 3
    # no instance at all judges nothing recovered
    empty = judge({"family": "tms"}, {})
    assert (empty["recovered"], empty["recovered_all"], empty["recovered_per_instance"]) == (0.0, False, [])


def test_instance_count_comes_from_n_instances() -> None:
    # n_instances 4 with 3-long lists: the 4th instance has no metrics, so it fails every check
    v = decide({**tms(n_distinct=[5, 5, 5], mmcs=[0.999] * 3), "n_instances": 4}, {})
    assert v.recovered_per_instance == [True, True, True, False] and len(v.failed[3]) == len(v.checks)
    # a count that cannot be one falls back to the longest list
    for bad in (-1, 2.5, 10**12, "4", float("nan")):
        assert decide({**tms(), "n_instances": bad}, {}).n_instances == 3, bad


def test_resid_and_user_file_rejudge() -> None:
    assert judge(RESID, {})["recovered"] == 1.0
    assert judge(RESID, {"scrub_ratio_min": 20})["recovered"] == 0.0
    assert judge(RESID, {"norm_top1_mse_max": 0.5})["recovered"] == 0.0
    assert decide({**RESID, "median_norm_top1_mse_per_instance": [None]}, {}).failed == (("top1_mse",),)
    plain = {"family": "file", "n_features": 3, "identity_error_per_instance": [0, 1], "ground_truth": False}
    assert judge(plain, {})["recovered_per_instance"] == [True, False]
    # a file with ground truth is judged on its weights too
    shipped = {**plain, "ground_truth": True, **{f"{k}_per_instance": [v, v] for k, v in GOOD_TMS.items()}}
    assert decide(shipped, {}).checks == ("identity", "split", "mechanism_cos", "mechanism_norm")
    assert decide({**shipped, "mechanism_cos_per_instance": [0.66, 1.0]}, {}).failed == (
        ("mechanism_cos",),
        ("identity",),
    )


def test_family_of_old_metrics_and_unknown_families() -> None:
    # schema-1 metrics carry no family: it follows from their keys
    assert family_kind({"mmcs_per_instance": [1.0]}) == "tms"
    assert family_kind({"dedicated_fraction_per_instance": [1.0]}) == "resid_mlp"
    assert family_kind({"identity_error_per_instance": [0]}) == "file"
    with pytest.raises(ConfigError, match="unknown target family 'nope'; known: tms, resid_mlp, gated, file"):
        judge({"family": "nope", "n_instances": 1}, {})
    with pytest.raises(ConfigError, match="eval: mmcs_minn: unknown key"):
        judge(tms(), {"mmcs_minn": 0.9})
    with pytest.raises(ConfigError, match=r"mechanism_norm_min \(1.5\) must be <= mechanism_norm_max \(1.25\)"):
        judge(tms(), {"mechanism_norm_min": 1.5})


def test_rules_and_keys() -> None:
    ev = EvalConfig(split_max=0.1)
    assert rules("tms", ev)[:3] == [
        "MMCS >= 0.99",
        "ML2R >= 0.8",
        "one-to-one argmax matching (as many distinct components as features)",
    ]
    assert "no split: a second component's share of any true mechanism <= 0.1" in rules("tms", ev)
    assert rules("file", ev, ["identity"]) == ["identity-pattern error 0 (tolerance 0.1)"]
    assert {"mmcs", "scrub_ratio", "split_share", "identity_error", "recovered"} <= set(objective_keys())
    assert not any(k.endswith("_per_instance") for k in objective_keys()) and "family" not in objective_keys()
    assert "check_split_per_instance" in metric_keys("tms") and "scrub_ratio" in metric_keys("resid_mlp")
    assert (EvalConfig().split_max, EvalConfig().mechanism_cos_min) == (0.08, 0.97)
