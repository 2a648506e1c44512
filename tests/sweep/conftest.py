"""Shared sweep-test fixtures: a tiny trained target, sweep files on it, one local Ray per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from apd.sweep.results import TRIALS_FILE, read_table

TINY = {
    # a 60-step TMS 5-2 decomposition of a 300-step target: seconds per trial on one core
    "steps": 60,
    "batch_size": 128,
    "eval.figures": False,
}


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TMS 5-2 target trained for 300 steps, cached in a private APD_CACHE_DIR (set for the
    session: sweeps forward it to their workers)."""
    from apd.targets.train import train_target

    previous, threads = os.environ.get("APD_CACHE_DIR"), torch.get_num_threads()
    os.environ["APD_CACHE_DIR"] = str(tmp_path_factory.mktemp("targets"))
    torch.set_num_threads(1)  # tiny models: more threads only contend on a 2-core runner
    yield train_target("tms-5-2", 0, steps=300, progress=False, device="cpu")
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("APD_CACHE_DIR", None)
    else:
        os.environ["APD_CACHE_DIR"] = previous


def sweep_dict(target: Path, **changes: Any) -> dict[str, Any]:
    """A small sweep on the tiny target; `changes` replace top-level keys."""
    data: dict[str, Any] = {
        "experiment": "tms-5-2",
        "fixed": {**TINY, "target.name": None, "target.path": str(target)},
        "report_every": 20,
        "parameters": {
            "topk": {"type": "uniform", "low": 0.2, "high": 0.3},
            "lr": {"type": "loguniform", "low": 0.005, "high": 0.05},
        },
        "seeds": [0, 1],
        "search": {"algorithm": "tpe", "n_trials": 2, "seed": 0},
        "objective": {"metric": "mmcs", "mode": "max"},
        "tracking": {"enabled": False},
    }
    data.update(changes)
    return data


def trial_rows(out: Path) -> dict[str, dict[str, Any]]:
    """`OUT/trials.parquet` by trial id ({} before the sweep wrote it), read as the analysis reads it."""
    path = out / TRIALS_FILE
    return {r["trial_id"]: r for r in read_table(path).to_pylist()} if path.exists() else {}


def write_sweep(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ray_local(tiny_target: Path) -> Iterator[None]:
    """One private 2-CPU Ray for the session (started after APD_CACHE_DIR is set, so workers see it),
    set up as a local sweep sets up its own: loopback only, with a token of its own."""
    from apd.sweep.ray_engine import local_ray

    # a private RAY_TMPDIR (short: it holds Unix sockets) keeps this Ray out of /tmp/ray, so no
    # bare `ray.init()` of another test or developer joins it
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp = tempfile.mkdtemp(prefix="apdray", dir="/tmp")
    with local_ray(num_cpus=2, object_store_memory=256 * 2**20):
        yield
    if previous is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous
    shutil.rmtree(tmp, ignore_errors=True)
