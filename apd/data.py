"""Sparse-feature data (docs/method.md §2.1), generated on the device from a seeded generator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

N_ACTIVE = {
    "exactly_one_active": 1,
    "exactly_two_active": 2,
    "exactly_three_active": 3,
    "exactly_four_active": 4,
    "exactly_five_active": 5,
}


def sample_sparse_features(
    batch_size: int,
    n_instances: int,
    n_features: int,
    *,
    feature_probability: float,
    value_range: tuple[float, float],
    data_generation_type: str = "at_least_zero_active",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """A batch `(batch, instances, n_features)` of sparse feature values.

    `at_least_zero_active`: each feature on independently with `feature_probability`, value
    U[lo, hi) (all-zero samples allowed). `exactly_n_active`: n distinct features, values U[lo, hi).
    """
    lo, hi = value_range
    shape = (batch_size, n_instances, n_features)
    values = torch.rand(shape, generator=generator, device=device) * (hi - lo) + lo
    if data_generation_type == "at_least_zero_active":
        on = torch.rand(shape, generator=generator, device=device) < feature_probability
        return values * on
    n = N_ACTIVE.get(data_generation_type)
    if n is None:
        raise ValueError(f"unknown data_generation_type {data_generation_type!r}")
    if n > n_features:
        raise ValueError(f"{data_generation_type} needs at least {n} features (got {n_features})")
    # n distinct features per sample: the n smallest of iid uniform keys
    keys = torch.rand(shape, generator=generator, device=device)
    idx = keys.topk(n, dim=-1, largest=False).indices
    on = torch.zeros(shape, device=device, dtype=torch.bool).scatter_(-1, idx, True)
    return values * on


Sampler = Callable[[int, torch.Generator], Tensor]
"""Draws `batch_size` inputs `(batch, instances, n_inputs)` from a generator on the device."""


class Batches:
    """An endless, resumable stream of batches: its state is the generator's state."""

    def __init__(self, sample: Sampler, batch_size: int, *, seed: int, device: torch.device | str) -> None:
        self.sample, self.batch_size = sample, batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        return self.sample(self.batch_size, self.generator)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
