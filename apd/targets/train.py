"""Train registered targets with their family's recipe and cache them as self-describing files.

Cache: `cache_dir()/<name>-seed<seed>.pt` for a registered spec, `<name>-<hash>-seed<seed>.pt` for
one with overrides (`hash`: `TargetSpec.cache_key`, 8 hex digits of the resolved spec), so an
overridden target never collides with the registered one (`APD_CACHE_DIR` or
`~/.cache/apd-sweeps/targets`), written atomically. A file holds `format`, `name`, `seed`, `spec`
(a dict), `state_dict` and `metadata` (`final_loss`, `steps`, `date`, `train_seconds`, `device`,
`torch`), so it loads without the registry.
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
from apd.targets.family import TargetSpec
from apd.targets.registry import get_family, get_spec

FORMAT = "apd-sweeps-target/1"
FINAL_LOSS_BATCHES = 10
FINAL_LOSS_BATCH = 2048


@dataclass
class Trained:
    model: Target
    final_loss: float
    """Mean training loss over `FINAL_LOSS_BATCHES` fresh batches after training."""
    steps: int
    seconds: float


def cache_dir() -> Path:
    return Path(os.environ.get("APD_CACHE_DIR") or "~/.cache/apd-sweeps/targets").expanduser()


def cache_path(name: str, seed: int = 0, steps: int | None = None, spec: TargetSpec | None = None) -> Path:
    """Where `train_target` caches a target; a step override or a spec other than the registered one
    gets its own file."""
    suffix = "" if steps is None else f"-steps{steps}"
    key = "" if spec is None or spec == get_spec(name) else f"-{spec.cache_key()}"
    return cache_dir() / f"{name}{key}-seed{seed}{suffix}.pt"


def train(
    spec: TargetSpec,
    seed: int = 0,
    *,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Trained:
    """Initialise from `seed` and train with the family's recipe (`steps` overrides its length)."""
    start = time.perf_counter()
    family = get_family(spec.kind)
    dev = resolve_device(device)
    model = family.build(spec, seed).to(dev)
    data_gen = torch.Generator(device=dev).manual_seed(seed)
    p, vr = getattr(spec, "feature_probability", None), getattr(spec, "value_range", None)
    if p is None or vr is None:
        raise ConfigError(f"{spec.kind} spec: a trained target needs feature_probability and value_range")

    def batch(size: int) -> torch.Tensor:
        return model.sample(size, feature_probability=p, value_range=vr, generator=data_gen)

    n_steps, batch_size = 0, FINAL_LOSS_BATCH
    recipe = family.recipe(spec)
    if recipe is not None:
        n_steps, batch_size = steps if steps is not None else recipe.steps, recipe.batch_size
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        bar = trange(n_steps, desc=f"train {spec.kind}", disable=not progress, ncols=100)
        for step in bar:
            lr = lr_at(step, lr=recipe.lr, steps=n_steps, schedule=recipe.lr_schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = family.train_loss(spec, model, batch(batch_size))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and (step % 100 == 0 or step == n_steps - 1):  # .item() syncs the device
                bar.set_postfix(loss=f"{loss.item():.3e}", lr=f"{lr:.1e}")
    model.eval().requires_grad_(False)
    with torch.no_grad():
        final = torch.stack([family.train_loss(spec, model, batch(batch_size)) for _ in range(FINAL_LOSS_BATCHES)])
    return Trained(model, final.mean().item(), n_steps, time.perf_counter() - start)


def save_target(path: Path, *, name: str, seed: int, spec: TargetSpec, trained: Trained) -> None:
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
            "device": str(trained.model.device),
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
    spec: TargetSpec | None = None,
) -> Path:
    """Train the registered target `name` (or `spec`, its overridden form) and cache it; reuse the
    cached file unless `force`."""
    spec = spec or get_spec(name)
    if not get_family(spec.kind).cacheable:
        raise ConfigError(f"target {name!r} is the user file {getattr(spec, 'path', '?')}; there is nothing to train")
    path = cache_path(name, seed, steps, spec)
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
