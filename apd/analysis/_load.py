"""Read sweep outputs (`OUT/trials.parquet`, `OUT/history.parquet`, `OUT/sweep.yaml`) into pandas."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from apd.config import read_yaml
from apd.errors import ConfigError
from apd.sweep.results import HISTORY_FILE, TRIALS_FILE, read_table

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
