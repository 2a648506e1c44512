"""One trial's run folder (`metrics.json`, `config.yaml`, `components.pt`, `figures/`) for deep dives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from apd.config import read_yaml
from apd.errors import ConfigError

DIR_COLUMNS = ("out_dir", "trial_dir", "run_dir")
"""Columns of trials.parquet that may name a trial's run folder."""


@dataclass
class TrialArtifacts:
    """What a finished run left on disk."""

    dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any] | None
    figures: list[Path]
    components: Path | None

    def scalar_metrics(self) -> dict[str, Any]:
        """The metrics that are single numbers, strings or booleans (no per-instance lists)."""
        return {k: v for k, v in self.metrics.items() if not isinstance(v, (list, dict))}


def trial_dir(out: str | Path, trial_id: str, trials: pd.DataFrame | None = None) -> Path:
    """The run folder of `trial_id` in sweep output `out`: a folder column of its row, else a folder named after it."""
    root = Path(out)
    if trials is not None:
        row = trials[trials["trial_id"].astype(str) == str(trial_id)]
        for col in DIR_COLUMNS:
            if col in row.columns and len(row) and isinstance(row[col].iloc[0], str) and row[col].iloc[0]:
                p = Path(row[col].iloc[0])
                for cand in (p, root / p):
                    if (cand / "metrics.json").is_file():
                        return cand
    for cand in (root / "trials" / str(trial_id), root / str(trial_id)):
        if (cand / "metrics.json").is_file():
            return cand
    hits = sorted(p.parent for p in root.rglob("metrics.json") if p.parent.name == str(trial_id))
    if hits:
        return hits[0]
    raise ConfigError(f"{root}: no run folder with metrics.json for trial {trial_id}")


def load_trial(path: str | Path) -> TrialArtifacts:
    """Read a run folder written by `apd decompose` or a sweep trial."""
    d = Path(path)
    mpath = d / "metrics.json"
    if not mpath.is_file():
        raise ConfigError(f"{mpath}: no such file (not a run folder?)")
    try:
        metrics = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{mpath}: not valid JSON ({e.msg}, line {e.lineno})") from None
    cpath = d / "config.yaml"
    config = read_yaml(cpath) if cpath.is_file() else None
    figs = sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []
    comps = d / "components.pt"
    return TrialArtifacts(d, metrics, config, figs, comps if comps.is_file() else None)


def rerender(artifacts: TrialArtifacts, out_dir: str | Path, *, device: str = "cpu") -> list[Path]:
    """Evaluate the stored components again and redraw the run's figures with `apd.figures` into `out_dir`."""
    import torch

    from apd.config import DecomposeConfig
    from apd.figures import make_figures
    from apd.methods import method_of
    from apd.metrics import evaluate
    from apd.targets import load_target

    if artifacts.config is None or artifacts.components is None:
        raise ConfigError(f"{artifacts.dir}: re-rendering needs config.yaml and components.pt")
    cfg = DecomposeConfig.from_dict({**artifacts.config, "device": device}, source=str(artifacts.dir / "config.yaml"))
    loaded = load_target(cfg.target, device)
    dev = torch.device(device)
    try:
        saved = torch.load(artifacts.components, map_location=dev, weights_only=True)
    except Exception as e:  # a foreign or planted file: never unpickle arbitrary objects
        raise ConfigError(f"{artifacts.components}: not a components file ({type(e).__name__})") from None
    comps = method_of(cfg).load(cfg, loaded.model, saved["state_dict"], dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)  # the evaluation stream `apd.run` uses
    metrics, arrays = evaluate(cfg, loaded.model, comps, sample=lambda n: loaded.sample(n, gen), labels=loaded.labels)
    return make_figures(loaded.model, comps, metrics, arrays, Path(out_dir))
