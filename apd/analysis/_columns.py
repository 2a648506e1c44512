"""Column conventions of `trials.parquet`: swept parameters, metrics, objectives, labels and units.

Metric labels come from the target families (`Family.columns`); what is left here is generic.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

PARAM = "param."
METRIC = "metric."
SEED_PARAMS = ("param.seed",)
"""The replica seed: never part of a setting (it is what varies within one)."""

_METRIC_LABELS = {
    "identity_error": "identity-pattern errors (count)",
    "mean_active": "active components per sample (mean count)",
    "recovered": "recovered instances (share)",
    "n_represented": "represented features (count)",
}
_PARAM_LABELS = {
    "topk": "topk (active components per sample)",
    "lr": "learning rate",
    "C": "C (components)",
    "m": "m (inner rank)",
    "steps": "steps",
    "batch_size": "batch size (samples)",
    "init_scale": "init scale (multiplier)",
    "schatten_pnorm": "Schatten p",
    "pnorm": "Lp p",
    "feature_probability": "feature probability",
}


def param_columns(df: pd.DataFrame | pd.Series) -> list[str]:
    """The swept-parameter columns (or fields of one row), without the replica seed."""
    names = df.columns if isinstance(df, pd.DataFrame) else df.index
    return [str(c) for c in names if str(c).startswith(PARAM) and c not in SEED_PARAMS]


def varying_params(df: pd.DataFrame) -> list[str]:
    """Parameter columns that take more than one value in `df`."""
    return [c for c in param_columns(df) if df[c].dropna().astype(str).nunique() > 1]


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(METRIC)]


def objective_columns(df: pd.DataFrame) -> list[str]:
    """`objective` for single-objective sweeps, else `objective.0`, `objective.1`, ... in order."""
    multi = [c for c in df.columns if re.fullmatch(r"objective\.\d+", c)]
    if multi:
        return sorted(multi, key=lambda c: int(c.split(".")[1]))
    return ["objective"] if "objective" in df.columns else []


def short(col: str) -> str:
    """`param.target.feature_probability` -> `target.feature_probability`; `metric.mmcs` -> `mmcs`."""
    for prefix in (PARAM, METRIC):
        if col.startswith(prefix):
            return col[len(prefix) :]
    return col


def param_label(col: str) -> str:
    """Axis label of a parameter column, with its unit where it has one."""
    key = short(col)
    leaf = key.rsplit(".", 1)[-1]
    if leaf in _PARAM_LABELS:
        return _PARAM_LABELS[leaf] if key == leaf else f"{key} ({_PARAM_LABELS[leaf]})"
    if leaf.endswith("_coeff"):
        return f"{key} (loss coefficient)"
    return key


def metric_label(col: str) -> str:
    """Axis label of a metric: the family's own label (with its unit), else a generic one."""
    from apd.targets.registry import FAMILIES

    key = short(col)
    for family in FAMILIES.values():
        for column in family.columns:
            if column.key == key:
                return column.label
    if key in _METRIC_LABELS:
        return _METRIC_LABELS[key]
    if key.endswith("_loss"):
        return f"{key} (MSE-type loss)"
    return key


def is_missing(value: Any) -> bool:
    """None, NaN or pandas NA (but not a list or an array)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def as_list(value: Any) -> list[float] | None:
    """A list<double> cell (numpy array, list or scalar) as a Python list; None when missing."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in value]
    if is_missing(value):
        return None
    return [float(value)]


def fmt_value(value: Any) -> str:
    """A parameter value for a table: 4 significant digits."""
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return f"{float(value):.4g}"
    return yaml_value(value)


def yaml_value(value: Any) -> str:
    """A value as exact YAML for `--set key=value` (floats round-trip; None is null; lists in flow style)."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = repr(float(value))
        if "e" in text:  # YAML 1.1 reads `1e-05` as a string; `1.0e-05` as a float
            mantissa, exp = text.split("e")
            text = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exp if exp[0] in '+-' else '+' + exp}"
        return text
    return str(value)
