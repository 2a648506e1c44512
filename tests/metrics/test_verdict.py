"""`judge` re-derives verdicts from stored numbers alone."""

from __future__ import annotations

import json
import subprocess
import sys

from apd.config import EvalConfig
from apd.metrics import judge
from apd.metrics.keys import family_of, metric_keys

TMS = {
    "n_features": 5,
    "identity_error_per_instance": [0, 3, 0],
    "mmcs_per_instance": [0.995, 0.999, 0.98],
    "ml2r_per_instance": [0.9, 0.85, 0.95],
    "n_distinct_per_instance": [5, 4, 5],
}
RESID = {
    "n_features": 100,
    "identity_error_per_instance": [4],
    "dedicated_fraction_per_instance": [0.96],
    "n_dedicated_not_mono_per_instance": [0],
    "median_norm_top1_mse_per_instance": [0.7],
    "scrub_ratio_per_instance": [12.0],
}


def test_tms_rejudge():
    # defaults: inst 0 passes; inst 1 has 4 distinct (not one-to-one); inst 2 MMCS 0.98 < 0.99
    assert judge(TMS, EvalConfig()) == {
        "recovered": 1 / 3,
        "recovered_all": False,
        "recovered_per_instance": [True, False, False],
    }
    assert judge(TMS, {"require_one_to_one": False})["recovered_per_instance"] == [True, True, False]
    assert judge(TMS, {"mmcs_min": 0.97, "require_one_to_one": False})["recovered_all"] is True
    assert judge(TMS, {"mmcs_min": 0.97, "ml2r_max": 0.92})["recovered_per_instance"] == [True, False, False]


def test_resid_and_generic_rejudge():
    assert judge(RESID, {})["recovered"] == 1.0
    assert judge(RESID, {"scrub_ratio_min": 20})["recovered"] == 0.0
    assert judge(RESID, {"norm_top1_mse_max": 0.5})["recovered"] == 0.0
    assert judge({**RESID, "median_norm_top1_mse_per_instance": [None]}, {})["recovered"] == 0.0
    generic = {"n_features": 3, "identity_error_per_instance": [0, 1]}
    assert family_of(generic) == "generic"
    assert judge(generic, {})["recovered_per_instance"] == [True, False]


def test_keys_and_no_torch_import():
    assert "mmcs" in metric_keys("tms") and "scrub_ratio" in metric_keys("resid_mlp")
    assert "hidden_identity_rel_error" in metric_keys("tms", hidden_layers=True)
    code = (
        "import sys, json; from apd.metrics import judge; "
        f"print(json.dumps([judge({TMS!r}, {{}})['recovered_all'], 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]
