"""Hand-made sweep outputs in the results Parquet schema, with outcomes chosen so counts are known.

Each trial decomposes a one-instance TMS 5-2 (`n_instances` 1, so a trial is one judged instance);
its metrics are what a run stores, verdict included (`judge` with the default thresholds). A failure
mode fails more than one check, as real ones do: low MMCS also misaligns the mechanisms, low ML2R
is a split (split share 0.4, norm ratio 0.6), a non-distinct matching a merge (cosine 0.74).

The TMS 5-2 grid: topk in {0.1, 0.2, 0.3, 0.5} x schatten_coeff in {0.1, 1.0}, seeds 0-2 (8 settings,
24 judged trials) plus one FAILED trial (seed 3 of topk=0.2, schatten=1.0):

| topk | schatten 0.1                  | schatten 1.0         |
|------|-------------------------------|----------------------|
| 0.1  | 0/3 low MMCS                  | 0/3 low MMCS         |
| 0.2  | 2/3 (seed 2: low ML2R)        | 3/3 (+ 1 FAILED)     |
| 0.3  | 0/3 low ML2R                  | 3/3                  |
| 0.5  | 0/3 non-distinct (seed 2 DIVERGED) | 0/3 non-distinct |

So 2 of 8 settings recover on all 3 seeds (topk 0.2-0.3, schatten 1.0); 8/24 judged trials recover.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from apd.cli import main
from apd.config import EvalConfig
from apd.metrics import judge
from apd.sweep.results import HISTORY_FILE, TRIALS_FILE, history_table, trials_table, write_atomic
from apd.sweep.spec import validate_spec
from apd.targets import TMSSpec, TrainRecipe, get_family
from apd.targets.train import Trained, save_target

TOPKS = (0.1, 0.2, 0.3, 0.5)
SCHATTENS = (0.1, 1.0)
SEEDS = (0, 1, 2)
N_FEATURES = 5


def _mode(topk: float, schatten: float, seed: int) -> str:
    if topk == 0.1:
        return "low MMCS"
    if topk == 0.5:
        return "diverged" if (schatten == 0.1 and seed == 2) else "non-distinct matching"
    if schatten == 1.0:
        return "recovered"
    if topk == 0.2:
        return "low ML2R" if seed == 2 else "recovered"
    return "low ML2R"


def _metrics(mode: str, seed: int) -> dict[str, Any]:
    mmcs = {"low MMCS": 0.9}.get(mode, 0.998 + 0.0005 * seed)
    ml2r = {"low ML2R": 0.6}.get(mode, 0.9 - 0.01 * seed)
    distinct = 3 if mode == "non-distinct matching" else N_FEATURES
    cos = {"low MMCS": 0.9, "non-distinct matching": 0.74}.get(mode, 0.99)
    split = {"low ML2R": 0.4, "low MMCS": 0.04}.get(mode, 0.04)
    norm_min = {"low ML2R": 0.6}.get(mode, 0.88)
    ok = mode == "recovered"
    per = {
        "mmcs": mmcs,
        "ml2r": ml2r,
        "n_distinct": float(distinct),
        "mechanism_cos": cos,
        "mechanism_norm_min": norm_min,
        "mechanism_norm_max": 0.92,
        "split_share": split,
    }
    metrics = {
        "family": "tms",
        "n_features": N_FEATURES,
        "n_instances": 1,
        "n_hidden_layers": 0,
        **per,
        **{f"{k}_per_instance": [v] for k, v in per.items()},
        "identity_error": 0 if ok else 2,
        "identity_error_per_instance": [0.0 if ok else 2.0],
        "total_loss": 0.01 if ok else 0.05,
        "faithfulness_loss": 1e-4,
        "topk_recon_loss": 0.005 if ok else 0.02,
        "schatten_loss": 0.3,
        "mean_active": 1.2,
    }
    return metrics | judge(metrics, EvalConfig())


def _rows(experiment: str, sweep: str, objectives: int) -> list[dict[str, Any]]:
    """Rows in the sweep store's internal form (base columns, `params`, `metrics`, `objective` list)."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    combos = [(t, s, seed) for t in TOPKS for s in SCHATTENS for seed in SEEDS] + [(0.2, 1.0, 3)]
    for n, (topk, schatten, seed) in enumerate(combos):
        failed = seed == 3
        mode = "failed" if failed else _mode(topk, schatten, seed)
        status = {"failed": "FAILED", "diverged": "DIVERGED"}.get(mode, "COMPLETE")
        done = status == "COMPLETE"
        metrics = _metrics(mode, seed) if done else {}
        assert not done or metrics["recovered_all"] == (mode == "recovered")
        objective = None
        if done and objectives == 1:
            objective = [float(metrics["identity_error"])]
        elif done and objectives == 2:
            objective = [metrics["mmcs"], metrics["total_loss"]]
        rows.append(
            {
                "trial_id": f"t{n:04d}",
                "sweep": sweep,
                "experiment": experiment,
                "engine": "inline",
                "status": status,
                "error": "RuntimeError: boom"
                if failed
                else (None if done else "diverged at step 40: total_loss = nan"),
                "seed": seed,
                "setting_id": f"s-{topk}-{schatten}",
                "draw": n // 3,
                "recovered": float(mode == "recovered"),
                "recovered_all": mode == "recovered",
                "start_time": t0 + timedelta(minutes=n),
                "end_time": t0 + timedelta(minutes=n, seconds=30),
                "steps_done": 40 if status == "DIVERGED" else 100,
                "params": {"topk": topk, "schatten_coeff": schatten},
                "metrics": metrics,
                "objective": objective,
            }
        )
    return rows


def _history(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    hist: dict[str, dict[int, dict[str, float]]] = {}
    for row in rows:
        if row["status"] == "FAILED":
            continue
        final = row["metrics"].get("total_loss", 1.0)
        last = 100 if row["status"] == "COMPLETE" else 40
        steps = hist.setdefault(row["trial_id"], {})
        for step in range(0, last + 1, 20):
            loss = (1 - step / 100) * (1.0 + 0.1 * row["seed"]) + final
            steps[step] = {
                "lr": 1e-3,
                "total_loss": loss,
                "faithfulness_loss": loss / 10,
                "topk_recon_loss": loss / 2,
                "schatten_loss": 0.3,
                "mean_active": 1.5,
            }
    return hist


def sweep_spec(experiment: str, sweep: str, objectives: int) -> dict[str, Any]:
    objective = {
        1: [{"metric": "identity_error", "mode": "min"}],
        2: [{"metric": "mmcs", "mode": "max"}, {"metric": "total_loss", "mode": "min"}],
    }[objectives]
    return {
        "name": sweep,
        "experiment": experiment,
        "fixed": {"steps": 100, "batch_size": 64},
        "parameters": {
            "topk": {"type": "uniform", "low": 0.1, "high": 0.5},
            "schatten_coeff": {"type": "loguniform", "low": 0.1, "high": 1.0},
        },
        "seeds": list(SEEDS),
        "search": {"algorithm": "random", "n_trials": 8},
        "objective": objective,
    }


def write_sweep(
    out: Path,
    *,
    experiment: str = "tms-5-2",
    sweep: str = "tms-grid",
    objectives: int = 1,
    rows: list[dict[str, Any]] | None = None,
    history: bool = True,
    run_dirs: bool = False,
) -> Path:
    """Write trials.parquet (+ history.parquet, sweep.yaml, optional run folders) into `out`.

    The Parquet files come from the sweep engine's own schema code (`apd.sweep.results`).
    """
    out.mkdir(parents=True, exist_ok=True)
    spec = sweep_spec(experiment, sweep, objectives)
    validated = validate_spec(spec, source="fixture.yaml")
    rows = _rows(experiment, sweep, objectives) if rows is None else rows
    write_atomic(trials_table(validated, "inline", rows), out / TRIALS_FILE)
    if history:
        write_atomic(history_table(validated, "inline", _history(rows)), out / HISTORY_FILE)
    (out / "sweep.yaml").write_text(yaml.safe_dump(validated.resolved_dict(), sort_keys=False))
    if run_dirs:
        for row in rows:
            d = out / "trials" / row["trial_id"]
            (d / "figures").mkdir(parents=True, exist_ok=True)
            (d / "metrics.json").write_text(json.dumps({"status": row["status"], **row["metrics"]}))
    return out


@pytest.fixture
def make_sweep(tmp_path: Path) -> Callable[..., Path]:
    """`make_sweep(name, **kw)` writes a hand-made sweep output under tmp_path/name."""

    def make(name: str = "sweep", **kw: Any) -> Path:
        return write_sweep(tmp_path / name, **kw)

    return make


@pytest.fixture(scope="session")
def tms_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made two-objective sweep with run folders, shared read-only by the report and notebook tests."""
    return write_sweep(tmp_path_factory.mktemp("tms") / "out", objectives=2, run_dirs=True)


def rows_of(kind: str) -> list[dict[str, Any]]:
    """Degenerate row sets: `all_failed` (diverged or errored) and `one` (a single unrecovered trial)."""
    rows = _rows("tms-5-2", "tms-grid", 1)
    if kind == "one":
        return rows[:1]
    assert kind == "all_failed"
    for i, row in enumerate(rows):
        row |= {
            "status": "FAILED" if i % 5 == 0 else "DIVERGED",
            "metrics": {},
            "objective": None,
            "recovered": 0.0,
            "recovered_all": False,
            "error": "diverged at step 40: total_loss = nan",
        }
    return rows


@pytest.fixture
def degenerate_rows() -> Callable[[str], list[dict[str, Any]]]:
    return rows_of


def pentagon_target(path: Path, n_instances: int = 1) -> Path:
    """A TMS 5-2 target file, hand-set (no training): feature j at angle 2 pi j / 5, b_final = -0.5."""
    spec = TMSSpec(
        n_features=5,
        n_hidden=2,
        n_instances=n_instances,
        train=TrainRecipe(steps=1, batch_size=8, lr=1e-3, lr_schedule="constant"),
    )
    tms = get_family("tms").build(spec, 0)
    angles = torch.arange(5) * 2 * math.pi / 5
    with torch.no_grad():
        tms.W.copy_(torch.stack([torch.cos(angles), torch.sin(angles)], -1).expand(n_instances, 5, 2))
        tms.b_final.fill_(-0.5)
    save_target(path, name="pentagon", seed=0, spec=spec, trained=Trained(tms, 0.0, 0, 0.0))
    return path


@pytest.fixture(scope="session")
def inline_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sweep through the inline engine: TMS 5-2 (hand-set target), topk grid of 2, one seed, 30 steps."""
    root = tmp_path_factory.mktemp("inline")
    target = pentagon_target(root / "pentagon.pt")
    spec = {
        "name": "tiny-tms",
        "experiment": "tms-5-2",
        "fixed": {"target.name": None, "target.path": str(target), "steps": 30, "batch_size": 64},
        "report_every": 10,
        "parameters": {"topk": {"type": "grid", "values": [0.2, 0.6]}},
        "seeds": [0],
        "search": {"algorithm": "grid"},
        "objective": [{"metric": "mmcs", "mode": "max"}, {"metric": "total_loss", "mode": "min"}],
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = root / "out"
    args = ["sweep", str(root / "tiny.yaml"), "--engine", "inline", "--no-tracking", "--out", str(out)]
    assert main(args) == 0
    return out


def resid_rows() -> list[dict[str, Any]]:
    """Residual MLP, topk in {0.2, 0.5} x seeds 0-2 at schatten_coeff 1.0: topk 0.5 recovers on all 3
    seeds; topk 0.2 shares components (dedicated fraction 0.6) on all 3."""
    rows = []
    for n, (topk, seed) in enumerate((t, s) for t in (0.2, 0.5) for s in SEEDS):
        ok = topk == 0.5
        ded, dead = (0.98, 20.0 + seed) if ok else (0.6, 40.0)
        metrics = {
            "family": "resid_mlp",
            "n_features": 100,
            "n_instances": 1,
            "identity_error": 0 if ok else 40,
            "identity_error_per_instance": [0 if ok else 40],
            "dedicated_fraction": ded,
            "dedicated_fraction_per_instance": [ded],
            "n_dedicated_not_mono": 0,
            "n_dedicated_not_mono_per_instance": [0.0],
            "n_mono": 98.0 if ok else 50.0,
            "n_duo": 1.0 if ok else 20.0,
            "n_poly": 0.0 if ok else 5.0,
            "n_dead": dead,
            "median_norm_top1_mse": 0.5,
            "median_norm_top1_mse_per_instance": [0.5],
            "scrub_ratio": 30.0,
            "scrub_ratio_per_instance": [30.0],
            "total_loss": 0.1,
        }
        metrics |= judge(metrics, EvalConfig())
        rows.append(
            {
                "trial_id": f"r{n:03d}",
                "sweep": "resid-grid",
                "experiment": "resid-mlp-1",
                "engine": "inline",
                "status": "COMPLETE",
                "seed": seed,
                "setting_id": f"r-{topk}",
                "draw": n // 3,
                "recovered": float(ok),
                "recovered_all": ok,
                "steps_done": 100,
                "params": {"topk": topk, "schatten_coeff": 1.0},
                "metrics": metrics,
                "objective": [float(not ok)],
            }
        )
    return rows


@pytest.fixture
def resid_sweep(make_sweep: Callable[..., Path]) -> Path:
    return make_sweep("resid", experiment="resid-mlp-1", sweep="resid-grid", rows=resid_rows(), history=False)
