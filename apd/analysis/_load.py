"""Read sweep outputs (`OUT/trials.parquet`, `OUT/history.parquet`, `OUT/sweep.yaml`) into pandas.

Files of schema version 1 (before results named their method and target) are completed on load:
method `apd`, the target and its family from the sweep's experiment and `fixed` overrides, the
family of each row from its metrics, the instance count from its per-instance lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from apd.config import read_yaml
from apd.errors import ApdError, ConfigError
from apd.sweep.results import HISTORY_FILE, TRIALS_FILE, read_table

TARGET_COLUMNS = ("method", "target", "target_spec", "family", "n_instances", "experiment_ref")
"""Added by schema version 2."""

SPEC_FILE = "sweep.yaml"
TRIAL_COLUMNS = ("trial_id", "status")
HISTORY_COLUMNS = ("trial_id", "step")


def read_parquet(path: Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """One Parquet file as a frame; a missing, unreadable or incomplete file is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (not a sweep output directory?)")
    try:
        df = read_table(path).to_pandas()  # one handle: a running sweep may rewrite the file
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a readable Parquet file ({reason})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column {missing[0]!r}")
    return df


def read_metadata(path: Path) -> dict[str, str]:
    """The key-value metadata of a Parquet file (e.g. `apd_schema_version`); empty if unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError, ValueError):
        return {}
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in meta.items()}


def resolve_results(paths: str | Sequence[str | Path]) -> list[Path]:
    """Sweep output folders (a comma-separated string or a list) as the user meant them.

    A notebook's kernel runs in the notebook's folder (`analysis/`), not where `jupyter lab` was
    started, so a relative path is looked up from `$PWD` (the shell's folder at launch), then the
    project root (the nearest folder above holding `pyproject.toml`), then the working directory.
    A path found in none of them is returned under `$PWD`, so the error names where it was expected.
    """
    items = paths.split(",") if isinstance(paths, str) else [str(p) for p in paths]
    cwd = Path.cwd()
    bases = [Path(os.environ["PWD"])] if os.environ.get("PWD") else []
    bases += [d for d in (cwd, *cwd.parents) if (d / "pyproject.toml").is_file()][:1]
    bases.append(cwd)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        p = Path(item).expanduser()
        if p.is_absolute():
            out.append(p)
        else:
            out.append(next((b / p for b in bases if (b / p).is_dir()), bases[0] / p))
    return out


def _sweep_dir(out: str | Path) -> Path:
    p = Path(out)
    if not p.is_dir():
        raise ConfigError(f"{p}: no such sweep output directory")
    return p


def load_trials(outs: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """`trials.parquet` of one or several sweep outputs, concatenated, with `sweep` and `out` columns."""
    frames = []
    for out in [outs] if isinstance(outs, (str, Path)) else outs:
        d = _sweep_dir(out)
        df = read_parquet(d / TRIALS_FILE, TRIAL_COLUMNS)
        if "sweep" not in df.columns or df["sweep"].isna().all():
            df["sweep"] = d.resolve().name
        df["out"] = str(d)
        df["schema"] = read_metadata(d / TRIALS_FILE).get("apd_schema_version", "1")
        df = _complete(df, d)
        df["trial_id"] = df["trial_id"].astype(str)
        frames.append(df)
    if not frames:
        raise ConfigError("analyze: give at least one sweep output directory")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def load_history(outs: str | Path | Sequence[str | Path]) -> pd.DataFrame | None:
    """`history.parquet` of the sweeps that have one, concatenated with `sweep`/`out`; None if none has."""
    frames = []
    for out in [outs] if isinstance(outs, (str, Path)) else outs:
        d = _sweep_dir(out)
        if not (d / HISTORY_FILE).is_file():
            continue
        df = read_parquet(d / HISTORY_FILE, HISTORY_COLUMNS)
        df["out"] = str(d)
        df["trial_id"] = df["trial_id"].astype(str)
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def load_spec(out: str | Path) -> dict[str, Any] | None:
    """The resolved sweep spec `OUT/sweep.yaml` as a dict, or None when the file is absent."""
    path = Path(out) / SPEC_FILE
    if not path.is_file():
        return None
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


def _complete(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Fill what schema-1 rows (or rows whose target could not be described) lack."""
    for col in TARGET_COLUMNS:
        if col not in df.columns:
            df[col] = None
        df[col] = df[col].astype(object)
    if not len(df):
        return df
    spec = load_spec(out) or {}
    if df["method"].isna().any():
        method = spec.get("fixed", {}).get("method") if isinstance(spec.get("fixed"), dict) else None
        df["method"] = df["method"].fillna(method or _experiment_data(spec).get("method") or "apd")
    if df["experiment_ref"].isna().any():
        df["experiment_ref"] = df["experiment_ref"].fillna(spec.get("experiment") or df["experiment"])
    if df["target"].isna().any():
        name, target_spec, kind = _legacy_target(spec)
        df["target"] = df["target"].fillna(name or "?")
        if target_spec is not None:
            df["target_spec"] = df["target_spec"].fillna(target_spec)
        if kind is not None:
            df["family"] = df["family"].fillna(kind)
    for i in np.flatnonzero(df["family"].isna().to_numpy()):
        df.iat[i, df.columns.get_loc("family")] = _row_family(df.iloc[i])
    for i in np.flatnonzero(df["n_instances"].isna().to_numpy()):
        df.iat[i, df.columns.get_loc("n_instances")] = _row_instances(df.iloc[i])
    _share_instance_counts(df)
    return df


def _experiment_data(spec: dict[str, Any]) -> dict[str, Any]:
    """The sweep's experiment config with its `fixed` overrides, as a dict ({} when unreadable)."""
    from apd.config import apply_overrides, read_yaml, resolve_experiment

    try:
        data = read_yaml(resolve_experiment(str(spec.get("experiment"))))
        fixed = spec.get("fixed")
        return apply_overrides(data, fixed if isinstance(fixed, dict) else {}) if isinstance(data, dict) else {}
    except ApdError:
        return {}


def _legacy_target(spec: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(name, spec JSON, family) of the target a schema-1 sweep decomposed, from its experiment."""
    import json

    from apd.config import TargetRef
    from apd.targets.registry import get_family, resolve_spec

    target = _experiment_data(spec).get("target")
    if not isinstance(target, dict):
        return None, None, None
    name, path = target.get("name"), target.get("path")
    if not isinstance(name, str):
        return (Path(path).stem if isinstance(path, str) else None), None, None
    overrides = {k: v for k, v in target.items() if k not in TargetRef.model_fields}
    try:
        resolved = resolve_spec(name, overrides)
    except ApdError:
        return name, None, None
    kind = resolved.kind if get_family(resolved.kind).cacheable else None  # a file's family is in its metrics
    return name, json.dumps(resolved.to_dict(), sort_keys=True), kind


def _row_family(row: pd.Series) -> str | None:
    from apd.metrics.keys import family_kind

    metrics = {c[len("metric.") :]: v for c, v in row.items() if str(c).startswith("metric.") and _present(v)}
    return family_kind(metrics) if metrics else None


def _row_instances(row: pd.Series) -> int | None:
    values = row.get("metric.recovered_per_instance")
    return len(values) if isinstance(values, list | tuple | np.ndarray) else None


def _share_instance_counts(df: pd.DataFrame) -> None:
    """Rows without a count (diverged or pruned schema-1 trials) take their target's."""
    known = df.dropna(subset=["n_instances"]).groupby("target")["n_instances"].max()
    missing = df["n_instances"].isna()
    df.loc[missing, "n_instances"] = df.loc[missing, "target"].map(known)


def _present(v: Any) -> bool:
    if isinstance(v, list | tuple | np.ndarray):
        return True
    return v is not None and not (isinstance(v, float) and np.isnan(v))
