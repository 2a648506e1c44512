"""Train registered targets with their recipes and cache them as self-describing files.

Cache: `cache_dir()/<name>-seed<seed>.pt` (`APD_CACHE_DIR` or `~/.cache/apd-sweeps/targets`),
written atomically. A file holds `format`, `name`, `seed`, `spec` (a dict), `state_dict` and
`metadata` (`final_loss`, `steps`, `date`, `train_seconds`, `device`, `torch`), so it loads
without the registry.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import trange

from apd.device import resolve_device
from apd.errors import ConfigError
from apd.schedules import lr_at
from apd.targets.base import Target
from apd.targets.registry import get_spec
from apd.targets.specs import FileSpec, GatedSpec, ResidMLPSpec, TMSSpec, build_model
from apd.targets.tasks import sample_batch, task_loss

FORMAT = "apd-sweeps-target/1"
FINAL_LOSS_BATCHES = 10


@dataclass
class Trained:
    model: Target
    final_loss: float
    """Mean training loss over `FINAL_LOSS_BATCHES` fresh batches after training."""
    steps: int
    seconds: float


def cache_dir() -> Path:
    return Path(os.environ.get("APD_CACHE_DIR") or "~/.cache/apd-sweeps/targets").expanduser()


def cache_path(name: str, seed: int = 0, steps: int | None = None) -> Path:
    """Where `train_target` caches a target; a step override gets its own file."""
    suffix = "" if steps is None else f"-steps{steps}"
    return cache_dir() / f"{name}-seed{seed}{suffix}.pt"


def train(
    spec: TMSSpec | ResidMLPSpec | GatedSpec,
    seed: int = 0,
    *,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Trained:
    """Initialise from `seed` and train with the spec's recipe (`steps` overrides its length)."""
    start = time.perf_counter()
    dev = resolve_device(device)
    model = build_model(spec, seed).to(dev)
    data_gen = torch.Generator(device=dev).manual_seed(seed)

    def batch(size: int) -> torch.Tensor:
        return sample_batch(
            model, size, feature_probability=spec.feature_probability, value_range=spec.value_range, generator=data_gen
        )

    n_steps, batch_size = 0, 2048
    if not isinstance(spec, GatedSpec):  # the gated model is hand-set
        recipe = spec.train
        n_steps, batch_size = steps if steps is not None else recipe.steps, recipe.batch_size
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        bar = trange(n_steps, desc=f"train {spec.kind}", disable=not progress, ncols=100)
        for step in bar:
            lr = lr_at(step, lr=recipe.lr, steps=n_steps, schedule=recipe.lr_schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = task_loss(spec, model, batch(batch_size))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and (step % 100 == 0 or step == n_steps - 1):  # .item() syncs the device
                bar.set_postfix(loss=f"{loss.item():.3e}", lr=f"{lr:.1e}")
    model.eval().requires_grad_(False)
    with torch.no_grad():
        final = torch.stack([task_loss(spec, model, batch(batch_size)) for _ in range(FINAL_LOSS_BATCHES)])
    return Trained(model, final.mean().item(), n_steps, time.perf_counter() - start)


def save_target(
    path: Path, *, name: str, seed: int, spec: TMSSpec | ResidMLPSpec | GatedSpec, trained: Trained
) -> None:
    """Write a target file atomically (a temp file in the same directory, then `os.replace`)."""
    payload = {
        "format": FORMAT,
        "name": name,
        "seed": seed,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
        "metadata": {
            "final_loss": trained.final_loss,
            "steps": trained.steps,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "train_seconds": round(trained.seconds, 2),
            "device": str(next(trained.model.parameters()).device),
            "torch": str(torch.__version__),
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_target(
    name: str,
    seed: int = 0,
    *,
    progress: bool = True,
    force: bool = False,
    steps: int | None = None,
    device: str | torch.device = "auto",
) -> Path:
    """Train the registered target `name` with its recipe and cache it; reuse the cached file unless `force`."""
    spec = get_spec(name)
    if isinstance(spec, FileSpec):
        raise ConfigError(f"target {name!r} is the user file {spec.path}; there is nothing to train")
    path = cache_path(name, seed, steps)
    if path.is_file() and not force:
        return path
    trained = train(spec, seed, steps=steps, device=device, progress=progress)
    save_target(path, name=name, seed=seed, spec=spec, trained=trained)
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return dict(data["metadata"])


def train_target_main(name: str, seed: int, force: bool) -> int:
    """`apd train-target NAME [--seed N] [--force]`: train (or find) and report the cached file."""
    cached = cache_path(name, seed).is_file() and not force
    path = train_target(name, seed, force=force)
    meta = read_metadata(path)
    what = "already cached" if cached else f"trained in {meta['train_seconds']:.0f}s on {meta['device']}"
    print(f"{name} (seed {seed}): {what}: {path}")
    print(f"final loss {meta['final_loss']:.4e} after {meta['steps']} steps")
    return 0
