"""What the analysis needs from a sweep's own description (`OUT/sweep.yaml`, the Parquet metadata).

Objectives and their directions, the `fixed` overrides and seed handling (for exact rerun commands),
and the numeric ranges of the swept parameters (for Optuna distributions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from apd.analysis._columns import objective_columns
from apd.analysis._load import TRIALS_FILE, load_spec, read_metadata
from apd.analysis._optuna import STUDY_FILES, Direction, load_stored_study

_MODES: dict[str, Direction] = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}


@dataclass
class SweepInfo:
    objectives: list[str]
    """Objective columns of trials.parquet, in order."""
    objective_names: list[str]
    directions: list[Direction]
    fixed: dict[str, Any] = field(default_factory=dict)
    """Non-swept dotted overrides every trial ran with."""
    seed_target: bool = False
    """The replica seed also set `target.seed`."""
    ranges: dict[str, BaseDistribution] = field(default_factory=dict)
    """Optuna distributions of the numeric swept parameters, keyed by dotted name."""
    study_file: str | None = None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, f"{key}.") if isinstance(v, dict) else {key: v}
    return out


def _declared(out: Path, spec: dict[str, Any]) -> list[tuple[str, Direction | None]]:
    """Objectives from the Parquet metadata (`apd_objectives`), else from sweep.yaml."""
    meta = read_metadata(out / TRIALS_FILE).get("apd_objectives")
    raw: Any = None
    if meta:
        try:
            raw = json.loads(meta)
        except json.JSONDecodeError:
            raw = None
    if raw is None:
        raw = spec.get("objective")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    out_list: list[tuple[str, Direction | None]] = []
    for item in items:
        if isinstance(item, dict):
            out_list.append((str(item.get("metric", "objective")), _MODES.get(str(item.get("mode", "")).lower())))
    return out_list


def _ranges(spec: dict[str, Any]) -> dict[str, BaseDistribution]:
    params = spec.get("parameters")
    out: dict[str, BaseDistribution] = {}
    if not isinstance(params, dict):
        return out
    for key, p in params.items():
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        try:
            if kind == "uniform":
                out[key] = FloatDistribution(float(p["low"]), float(p["high"]), step=p.get("step"))
            elif kind == "loguniform":
                out[key] = FloatDistribution(float(p["low"]), float(p["high"]), log=True)
            elif kind == "int":
                out[key] = IntDistribution(
                    int(p["low"]), int(p["high"]), step=int(p.get("step", 1)), log=bool(p.get("log", False))
                )
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entry: fall back to inferring the range from the values
    return out


def sweep_info(out: str | Path, trials: pd.DataFrame) -> SweepInfo:
    """Objectives (names, directions), fixed overrides and parameter ranges of one sweep output."""
    d = Path(out)
    spec = load_spec(d) or {}
    cols = objective_columns(trials)
    declared = _declared(d, spec)
    names = [n for n, _ in declared] if len(declared) == len(cols) else list(cols)
    dirs: list[Direction | None] = [m for _, m in declared] if len(declared) == len(cols) else [None] * len(cols)
    study_file = next((f for f in STUDY_FILES if (d / f).is_file()), None)
    if any(m is None for m in dirs) and study_file is not None:
        study = load_stored_study(d)
        if study is not None and len(study.directions) == len(cols):
            dirs = [
                m or ("maximize" if s.name == "MAXIMIZE" else "minimize")
                for m, s in zip(dirs, study.directions, strict=True)
            ]
    directions: list[Direction] = [m or "minimize" for m in dirs]
    fixed = spec.get("fixed")
    return SweepInfo(
        cols,
        names,
        directions,
        _flatten(fixed) if isinstance(fixed, dict) else {},
        bool(spec.get("seed_target", False)),
        _ranges(spec),
        study_file,
    )
