"""One decomposition end to end: load the target, decompose, judge, write the run folder.

Shared by `apd decompose` and the sweep trials. Writes into `out_dir`: `config.yaml` (resolved),
`metrics.json`, `components.pt` and `figures/*.png`. `run_pack` does the same for the members of a
pack (`apd.pack`), one folder each, identical in format to a solo run's.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from apd.config import DecomposeConfig
from apd.decompose import DecomposeResult, StepRecord, decompose
from apd.device import resolve_device
from apd.errors import ConfigError
from apd.methods import method_of

if TYPE_CHECKING:
    from apd.targets.load import LoadedTarget


@dataclass
class RunResult:
    status: Literal["finished", "diverged", "stopped"]
    steps_done: int
    metrics: dict[str, Any]
    """Exactly what `metrics.json` holds."""
    error: str | None
    out_dir: Path | None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` through a temp file in its folder and a rename, so readers never see half a file.

    The temp file is created with mode 0666 minus the umask, like any `open(path, "w")`: tempfile's
    0600 would make run folders on shared storage unreadable to the rest of the team."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    raise FileExistsError(f"{path}: no free temporary name")


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


CHECKPOINT_KEYS = ("step", "components", "optimizer", "config")


def load_checkpoint(path: Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """A checkpoint written by `run_decomposition`, loaded with `weights_only=True`: tensors, dicts,
    lists, numbers and strings only, so a planted pickle cannot run code. One-line ConfigError otherwise.

    Loaded onto the CPU: `load_state_dict` moves components and optimizer state to the parameters'
    device, and a generator's state (data stream, sampling) is a CPU ByteTensor even for a CUDA
    generator, which refuses a CUDA one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{path}: refused: holds pickled objects other than tensors, dicts, lists, numbers and strings "
            "(loading them could run code)"
        ) from None
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or not set(keys) <= state.keys():
        raise ConfigError(f"{path}: not a checkpoint of apd decompose (no {', '.join(keys)})")
    return state


RESUME_MAY_CHANGE = ("device", "eval.")
"""Config keys a resumed run may change: where it runs and how it is evaluated, not what it trains."""


def check_resumable(state: dict[str, Any], cfg: DecomposeConfig, path: Path) -> None:
    """Refuse to resume a checkpoint written for another config (its shapes or schedule would not match)."""
    old, new = _flat(state["config"]), _flat(cfg.to_dict())
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key) and not key.startswith(RESUME_MAY_CHANGE):
            raise ConfigError(
                f"{path}: written with {key}={old.get(key)!r}, now {new.get(key)!r}; resume with the same config "
                "or choose another --out"
            )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


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
    from apd.targets import load_target

    method = method_of(cfg)
    device = resolve_device(cfg.device)
    method.check_device(cfg, device)
    torch.manual_seed(cfg.seed)
    state = None
    if checkpoint_path is not None and checkpoint_path.exists():  # checked before a target is trained
        state = load_checkpoint(checkpoint_path)
        check_resumable(state, cfg, checkpoint_path)
    for folder in (out_dir, checkpoint_path.parent if checkpoint_path else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    loaded = load_target(cfg.target, device)
    target = loaded.model
    batches = loaded.batches(cfg.batch_size, seed=cfg.seed)

    def step_hook(record: StepRecord) -> None:
        every = checkpoint_every or cfg.log_every
        if checkpoint_path is not None and (record.step % every == 0):
            atomic_torch_save(record.state(), checkpoint_path)
        if on_step is not None:
            on_step(record)

    result = decompose(cfg, target, batches, on_step=step_hook, should_stop=should_stop, state=state, progress=progress)
    return finish_run(cfg, loaded, result, out_dir)


def run_pack(
    cfgs: Sequence[DecomposeConfig],
    out_dirs: Sequence[Path | None] | None = None,
    *,
    on_step: Callable[[dict[int, StepRecord]], None] | None = None,
    on_end: Callable[[int, RunResult], None] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
) -> dict[int, RunResult]:
    """`run_decomposition` for the members `cfgs` of one pack: each record step reports the live
    members' records as `on_step({j: record})`; when member j ends (diverged, or all finished) its
    folder `out_dirs[j]` is written and `on_end(j, result)` called. With `checkpoint_path` the pack
    resumes from it and saves there as a solo run does; a resumed pack runs (and returns) only the
    members still live in the checkpoint.
    """
    from apd.pack import PackRecord, check_members, decompose_pack
    from apd.targets import load_target

    check_members(cfgs)
    cfg = cfgs[0]
    device = resolve_device(cfg.device)
    method_of(cfg).check_device(cfg, device)
    torch.manual_seed(cfg.seed)
    dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    for folder in (*dirs, checkpoint_path.parent if checkpoint_path else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    loaded = load_target(cfg.target, device)
    # members with one seed draw one stream (the pack draws it once per step for all of them)
    streams = {seed: loaded.batches(cfg.batch_size, seed=seed) for seed in dict.fromkeys(c.seed for c in cfgs)}
    batches = [streams[c.seed] for c in cfgs]
    state = None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, ("step", "members", "components", "optimizer", "configs"))

    def step_hook(record: PackRecord) -> None:
        every = checkpoint_every or cfg.log_every
        if checkpoint_path is not None and (record.step % every == 0):
            atomic_torch_save(record.state(), checkpoint_path)
        if on_step is not None:
            on_step(record.records)

    results: dict[int, RunResult] = {}

    def end_hook(j: int, result: DecomposeResult) -> None:
        torch.manual_seed(cfgs[j].seed)  # evaluation as a solo run starts it
        results[j] = finish_run(cfgs[j], loaded, result, dirs[j])
        if on_end is not None:
            on_end(j, results[j])

    decompose_pack(cfgs, loaded.model, batches, on_step=step_hook, on_end=end_hook, state=state, progress=progress)
    return results


def finish_run(cfg: DecomposeConfig, loaded: LoadedTarget, result: DecomposeResult, out_dir: Path | None) -> RunResult:
    """Judge a decomposition of `loaded` (a `LoadedTarget`) and write its run folder."""
    from apd.figures import make_figures
    from apd.metrics import evaluate

    method = method_of(cfg)
    target, device = loaded.model, loaded.device
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
