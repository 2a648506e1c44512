"""The `recovered` verdict as a pure function of stored metrics (method notes 9).

`judge` reads only numbers that `evaluate` stored, so analysis can re-judge finished runs with
other thresholds. Thresholds that shape a measurement itself (`contribution_cutoff`,
`identity_tol`, `scrub_batches`, `scrub_batch_size`) were applied when the metrics were computed;
changing those needs `evaluate` again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from apd.config import EvalConfig
from apd.metrics.keys import family_of


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _ge(v: Any, threshold: float) -> bool:
    return _finite(v) and v >= threshold


def _le(v: Any, threshold: float) -> bool:
    return _finite(v) and v <= threshold


def tms_instance_recovered(m: Mapping[str, Any], i: int, cfg: EvalConfig) -> bool:
    """MMCS >= mmcs_min, one-to-one (if required), ML2R in range, hidden sum close to I."""
    ml2r = m["ml2r_per_instance"][i]
    ok = _ge(m["mmcs_per_instance"][i], cfg.mmcs_min) and _ge(ml2r, cfg.ml2r_min)
    if cfg.ml2r_max is not None:
        ok = ok and _le(ml2r, cfg.ml2r_max)
    if cfg.require_one_to_one:
        ok = ok and m["n_distinct_per_instance"][i] == m["n_features"]
    if "hidden_identity_rel_error_per_instance" in m:
        ok = ok and _le(m["hidden_identity_rel_error_per_instance"][i], cfg.identity_hidden_rel_tol)
    return bool(ok)


def resid_instance_recovered(m: Mapping[str, Any], i: int, cfg: EvalConfig) -> bool:
    """Dedicated fraction, dedicated components mono, median normalised top-1 MSE, scrub ratio."""
    return bool(
        _ge(m["dedicated_fraction_per_instance"][i], cfg.dedicated_min)
        and m["n_dedicated_not_mono_per_instance"][i] == 0
        and _le(m["median_norm_top1_mse_per_instance"][i], cfg.norm_top1_mse_max)
        and _ge(m["scrub_ratio_per_instance"][i], cfg.scrub_ratio_min)
    )


def generic_instance_recovered(m: Mapping[str, Any], i: int, cfg: EvalConfig) -> bool:
    """Targets without a family-specific verdict: a clean identity pattern."""
    return bool(m["identity_error_per_instance"][i] == 0)


_RULES = {
    "tms": tms_instance_recovered,
    "resid_mlp": resid_instance_recovered,
    "generic": generic_instance_recovered,
}


def judge(metrics: Mapping[str, Any], eval_cfg: EvalConfig | Mapping[str, Any]) -> dict[str, Any]:
    """`recovered` (fraction of instances), `recovered_all` and `recovered_per_instance`.

    `eval_cfg` is an `EvalConfig` or a mapping of its fields (missing ones take the defaults).
    """
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(dict(eval_cfg), source="eval")
    rule = _RULES[family_of(metrics)]
    per = [rule(metrics, i, cfg) for i in range(len(metrics["identity_error_per_instance"]))]
    return {
        "recovered": sum(per) / len(per) if per else 0.0,
        "recovered_all": bool(per) and all(per),
        "recovered_per_instance": per,
    }
