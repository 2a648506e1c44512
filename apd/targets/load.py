"""Load a target for decomposition, with the data distribution it is decomposed on."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apd.config import TargetRef
from apd.data import Batches
from apd.errors import ApdError, ConfigError
from apd.targets.base import Target
from apd.targets.file import linear_stack_from_arrays, read_arrays
from apd.targets.registry import get_spec
from apd.targets.specs import FileSpec, GatedSpec, TargetSpec, build_model, parse_spec
from apd.targets.tasks import model_device, sample_batch, task_labels
from apd.targets.train import FORMAT, cache_path, resolve_device, train_target


@dataclass
class LoadedTarget:
    """A frozen target in eval mode on its device, plus its input distribution."""

    model: Target
    name: str
    spec: TargetSpec
    seed: int
    feature_probability: float
    """Sparse-feature probability (gated: probability of each control bit)."""
    value_range: tuple[float, float]
    """Sparse-feature value range (gated: range of x)."""
    data_generation_type: str = "at_least_zero_active"

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, data_generation_type: str | None = None
    ) -> Tensor:
        """Inputs `(batch, instances, n_inputs)` on the target's device."""
        return sample_batch(
            self.model,
            batch_size,
            feature_probability=self.feature_probability,
            value_range=self.value_range,
            data_generation_type=data_generation_type or self.data_generation_type,
            generator=generator,
        )

    def batches(self, batch_size: int, *, seed: int = 0, data_generation_type: str | None = None) -> Batches:
        """An endless, resumable stream of `sample` batches."""
        sample = functools.partial(self.sample, data_generation_type=data_generation_type)
        return Batches(sample, batch_size, seed=seed, device=self.device)

    def labels(self, x: Tensor) -> Tensor:
        """The task labels the target was trained on (TMS |x|, resid x + ReLU(c x), gated sum a_i F_i(x))."""
        if isinstance(self.spec, FileSpec):
            raise ApdError(f"target {self.name}: a user-supplied file has no task labels")
        return task_labels(self.spec, self.model, x)


def load_target(ref: TargetRef, device: str | torch.device = "auto") -> LoadedTarget:
    """The target named by `ref` (trained and cached on a miss) or read from `ref.path`."""
    dev = resolve_device(device)
    if ref.name is None:
        assert ref.path is not None
        spec, model, name, seed = _read_target_file(Path(ref.path).expanduser())
    else:
        name, seed = ref.name, ref.seed
        spec = get_spec(name)
        if isinstance(spec, FileSpec):
            spec, model, _, _ = _read_target_file(Path(spec.path).expanduser(), spec)
        elif isinstance(spec, GatedSpec):
            model = build_model(spec, seed)
        else:
            path = cache_path(name, seed)
            if not path.is_file():
                print(f"target {name} (seed {seed}) is not cached at {path}; training it ({spec.train.steps} steps)")
                train_target(name, seed, progress=False, device=dev)
            cached_spec, model, _, _ = _read_target_file(path)
            if cached_spec != spec:
                raise ConfigError(
                    f"{path}: trained for another spec of {name}; retrain with `apd train-target {name} "
                    f"--seed {seed} --force`"
                )
    model = model.to(dev).eval().requires_grad_(False)
    assert spec.feature_probability is not None and spec.value_range is not None
    p = ref.feature_probability if ref.feature_probability is not None else spec.feature_probability
    return LoadedTarget(model, name, spec, seed, p, spec.value_range, ref.data_generation_type)


def _read_target_file(path: Path, file_spec: FileSpec | None = None) -> tuple[TargetSpec, Target, str, int]:
    """(spec, model on CPU, name, seed) from a `train_target` file or a user linear stack."""
    data = read_arrays(path)
    if "format" not in data:
        stack, p, vr = linear_stack_from_arrays(data, path)
        fs = file_spec or FileSpec(path=str(path))
        spec = fs.model_copy(
            update={
                "feature_probability": p if fs.feature_probability is None else fs.feature_probability,
                "value_range": vr if fs.value_range is None else fs.value_range,
            }
        )
        return spec, stack, path.stem, 0
    if data["format"] != FORMAT:
        raise ConfigError(f"{path}: unsupported target file format {data['format']!r} (expected {FORMAT!r})")
    trained_spec = parse_spec(data.get("spec"), source=f"{path}: spec")
    if isinstance(trained_spec, FileSpec):
        raise ConfigError(f"{path}: spec: a trained target cannot be of kind file")
    seed = int(data.get("seed", 0))
    model = build_model(trained_spec, seed)
    try:
        model.load_state_dict(_state_dict(data, path))
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{path}: state_dict does not match its spec ({first})") from None
    return trained_spec, model, str(data.get("name", path.stem)), seed


def _state_dict(data: dict[str, Any], path: Path) -> dict[str, Tensor]:
    sd = data.get("state_dict")
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: missing state_dict")
    return sd
