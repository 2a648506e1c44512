"""One decomposition end to end: load the target, decompose, judge, write the run folder.

Shared by `apd decompose` and the sweep trials. Writes into `out_dir`: `config.yaml` (resolved),
`metrics.json`, `components.pt` and `figures/*.png`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from apd.config import DecomposeConfig
from apd.decompose import StepRecord, decompose
from apd.device import resolve_device
from apd.methods import method_of


@dataclass
class RunResult:
    status: Literal["finished", "diverged", "stopped"]
    steps_done: int
    metrics: dict[str, Any]
    """Exactly what `metrics.json` holds."""
    error: str | None
    out_dir: Path | None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        f.write(data)
    os.replace(f.name, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        torch.save(obj, f)
    os.replace(f.name, path)


def run_decomposition(
    cfg: DecomposeConfig,
    out_dir: Path | None = None,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Decompose `cfg.target` and evaluate the result against its ground truth.

    With `checkpoint_path`, the run resumes from it when it exists and saves a snapshot there
    every `checkpoint_every` steps (default: every record).
    """
    from apd.figures import make_figures
    from apd.metrics import evaluate
    from apd.targets import load_target

    method = method_of(cfg)
    device = resolve_device(cfg.device)
    method.check_device(cfg, device)
    torch.manual_seed(cfg.seed)
    for folder in (out_dir, checkpoint_path.parent if checkpoint_path else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    loaded = load_target(cfg.target, device)
    target = loaded.model
    batches = loaded.batches(cfg.batch_size, seed=cfg.seed)
    state = None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)

    def step_hook(record: StepRecord) -> None:
        every = checkpoint_every or cfg.log_every
        if checkpoint_path is not None and (record.step % every == 0):
            atomic_torch_save(record.state(), checkpoint_path)
        if on_step is not None:
            on_step(record)

    result = decompose(cfg, target, batches, on_step=step_hook, should_stop=should_stop, state=state, progress=progress)
    last = result.records[-1].as_dict() if result.records else {}
    metrics: dict[str, Any] = {"status": result.status, "steps_done": result.steps_done, "error": result.error}
    metrics |= {k: last.get(k) for k in (*method.loss_keys, *method.stat_keys)}
    artifacts = None
    if result.status == "finished":
        eval_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        scores, artifacts = evaluate(
            cfg, target, result.components, sample=lambda n: loaded.sample(n, eval_gen), labels=loaded.labels
        )
        metrics |= scores
    else:
        metrics |= {"recovered": 0.0, "recovered_all": False}

    if out_dir is not None:
        cfg.to_file(out_dir / "config.yaml")
        atomic_torch_save(
            method.saved_weights(result.components)
            | {"method": cfg.method, "state_dict": result.components.state_dict()},
            out_dir / "components.pt",
        )
        if artifacts is not None and cfg.eval.figures:
            make_figures(target, result.components, metrics, artifacts, out_dir / "figures")
        atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    return RunResult(result.status, result.steps_done, metrics, result.error, out_dir)
