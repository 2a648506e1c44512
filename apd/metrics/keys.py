"""The metrics.json keys written by `apd.metrics.evaluate`, and which target family a dict is from.

Imports nothing heavy, so analysis and the sweep code can use it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Family = Literal["tms", "resid_mlp", "generic"]

COMMON_KEYS = (
    "n_features",
    "identity_error",
    "identity_off_diag",
    "identity_diag_miss",
    "identity_error_per_instance",
    "recovered",
    "recovered_all",
    "recovered_per_instance",
)
TMS_KEYS = (
    "mmcs",
    "ml2r",
    "n_distinct",
    "mmcs_per_instance",
    "ml2r_per_instance",
    "n_distinct_per_instance",
)
TMS_HIDDEN_KEYS = ("hidden_identity_rel_error", "hidden_identity_rel_error_per_instance")
"""Only for TMS targets with hidden layers."""
RESID_KEYS = (
    "dedicated_fraction",
    "n_dedicated_not_mono",
    "n_mono",
    "n_duo",
    "n_poly",
    "n_dead",
    "n_represented",
    "median_norm_top1_mse",
    "scrubbed_loss",
    "anti_scrubbed_loss",
    "scrub_ratio",
    "dedicated_fraction_per_instance",
    "n_dedicated_not_mono_per_instance",
    "median_norm_top1_mse_per_instance",
    "scrub_ratio_per_instance",
)


def metric_keys(family: Family, *, hidden_layers: bool = False) -> tuple[str, ...]:
    """All keys `evaluate` returns for a target family."""
    extra = {"tms": TMS_KEYS + (TMS_HIDDEN_KEYS if hidden_layers else ()), "resid_mlp": RESID_KEYS}
    return COMMON_KEYS + extra.get(family, ())


def family_of(metrics: Mapping[str, Any]) -> Family:
    """The target family a metrics dict comes from, by its keys."""
    if "mmcs_per_instance" in metrics:
        return "tms"
    if "dedicated_fraction_per_instance" in metrics:
        return "resid_mlp"
    return "generic"
