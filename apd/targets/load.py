"""Load a target for decomposition, with the data distribution it is decomposed on."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apd.config import TargetRef
from apd.data import Batches
from apd.errors import ConfigError
from apd.targets.base import Target
from apd.targets.family import Family, TargetSpec
from apd.targets.file import read_arrays, user_target
from apd.targets.registry import family_of_model, get_family, parse_spec, resolve_spec
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
        return self.model.device

    @property
    def family(self) -> Family:
        """The family whose ground truth judges the network (a TMS-format user file: TMS)."""
        return family_of_model(self.model)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, data_generation_type: str | None = None
    ) -> Tensor:
        """Inputs `(batch, instances, n_inputs)` on the target's device."""
        return self.model.sample(
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
        return self.model.labels(x)


def load_target(ref: TargetRef, device: str | torch.device = "auto") -> LoadedTarget:
    """The target named by `ref` (with its spec overrides; trained and cached on a miss) or read from `ref.path`."""
    dev = resolve_device(device)
    if ref.name is None:
        assert ref.path is not None
        spec, model, name, seed = read_target_file(Path(ref.path).expanduser())
    else:
        name, seed = ref.name, ref.seed
        spec = resolve_spec(name, ref.overrides)
        family = get_family(spec.kind)
        recipe = family.recipe(spec)
        if recipe is None:  # hand-set, or the user's own file: nothing to train
            spec, model = family.materialize(spec, seed)
        else:
            path = cache_path(name, seed, spec=spec)
            if not path.is_file():
                print(f"target {name} (seed {seed}) is not cached at {path}; training it ({recipe.steps} steps)")
                train_target(name, seed, progress=False, device=dev, spec=spec)
            cached_spec, model, _, _ = read_target_file(path)
            if cached_spec != spec:
                raise ConfigError(
                    f"{path}: trained for another spec of {name}; retrain with `apd train-target {name} "
                    f"--seed {seed} --force`"
                )
    model = model.to(dev).eval().requires_grad_(False)
    p_spec, vr = getattr(spec, "feature_probability", None), getattr(spec, "value_range", None)
    assert p_spec is not None and vr is not None
    p = ref.feature_probability if ref.feature_probability is not None else p_spec
    return LoadedTarget(model, name, spec, seed, p, tuple(vr), ref.data_generation_type)


def read_target_file(path: Path) -> tuple[TargetSpec, Target, str, int]:
    """(spec, model on CPU, name, seed) from a `train_target` file or a user file (`apd.targets.file`)."""
    data = read_arrays(path)
    if "format" not in data:
        spec, model = user_target(path, data=data)
        return spec, model, path.stem, 0
    if data["format"] != FORMAT:
        raise ConfigError(f"{path}: unsupported target file format {data['format']!r} (expected {FORMAT!r})")
    trained_spec = parse_spec(data.get("spec"), source=f"{path}: spec")
    family = get_family(trained_spec.kind)
    if not family.cacheable:
        raise ConfigError(f"{path}: spec: a trained target cannot be of kind {trained_spec.kind}")
    seed = int(data.get("seed", 0))
    model = family.build(trained_spec, seed)
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


@dataclass(frozen=True)
class TargetInfo:
    """What the results record about a config's target, without training it."""

    name: str
    family: str
    """The kind of the family that judges it."""
    spec: dict[str, Any]
    n_instances: int | None

    @property
    def spec_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)


def describe_target(ref: TargetRef) -> TargetInfo:
    """Name, family, resolved spec and instance count of `ref`'s target; reads a file, never trains."""
    if ref.name is not None:
        spec = resolve_spec(ref.name, ref.overrides)
        family = get_family(spec.kind)
        if family.cacheable:
            data = spec.to_dict()
            return TargetInfo(ref.name, spec.kind, data, family.n_instances(data))
    loaded = load_target(ref, "cpu")
    return TargetInfo(loaded.name, loaded.family.kind, loaded.spec.to_dict(), loaded.model.n_instances)
