"""The hand-coded gated model computes sum_i a_i F_i(x) up to its interpolation error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from apd.config import TargetRef
from apd.targets import load_target, train_target
from apd.targets.gated import GatedMLP, gated_functions

GRID = torch.linspace(0.0, 5.0, 2001)


def grid_inputs(model: GatedMLP, bits: list[int]) -> torch.Tensor:
    x = torch.zeros(len(GRID), 1, model.n_inputs)
    x[:, 0, 0] = GRID
    x[:, 0, 1:] = torch.tensor(bits, dtype=torch.float32)
    return x


def interpolation_bound(model: GatedMLP, i: int) -> float:
    """Linear interpolation with knot spacing h errs by at most h^2/8 max|F''|, and
    |F_i''| <= |a| b^2 + |d| e^2 (gated-4: h = 5/9, bounds 0.004-0.010; measured 0.004-0.006)."""
    a, b, _, d, e, _, _ = model.coeffs[i].tolist()
    h = 5.0 / 9.0
    return h**2 / 8 * (abs(a) * b**2 + abs(d) * e**2)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_gate_computes_its_function(seed: int) -> None:
    model = GatedMLP(seed=seed)
    for i in range(4):
        bits = [int(j == i) for j in range(4)]
        out = model(grid_inputs(model, bits))[:, 0, 0]
        err = (out - gated_functions(GRID, model.coeffs)[:, i]).abs().max().item()
        assert err <= interpolation_bound(model, i) + 1e-5  # + float32 rounding of ~10 terms of size ~5


def test_gates_add_and_closed_gates_output_zero() -> None:
    model = GatedMLP()
    assert model(grid_inputs(model, [0, 0, 0, 0])).abs().max().item() == 0.0
    x = grid_inputs(model, [1, 0, 1, 1])
    expected = gated_functions(GRID, model.coeffs)[:, [0, 2, 3]].sum(-1)
    bound = sum(interpolation_bound(model, i) for i in (0, 2, 3))
    assert (model(x)[:, 0, 0] - expected).abs().max().item() <= bound + 1e-5
    assert torch.allclose(model.labels(x)[:, 0, 0], expected)


def test_coefficients_in_their_ranges_and_seeded() -> None:
    c = GatedMLP(n_functions=200).coeffs
    lo = torch.tensor([-1.0, 0.1, -math.pi, -1.0, 0.1, -math.pi, -1.0])
    hi = torch.tensor([1.0, 1.0, math.pi, 1.0, 1.0, math.pi, 1.0])
    assert ((c >= lo) & (c <= hi)).all()
    assert torch.equal(GatedMLP().coeffs, GatedMLP().coeffs)
    assert not torch.equal(GatedMLP(seed=0).coeffs, GatedMLP(seed=1).coeffs)


def test_neurons_are_monosemantic_and_each_function_is_rank_one_per_layer() -> None:
    model = GatedMLP()
    counts = torch.bincount(model.neuron_function.flatten(), minlength=4)
    assert counts.tolist() == [10, 10, 10, 10]
    for layer in range(2):
        w_in, w_out = model.mlp_in[layer][0], model.mlp_out[layer][0]
        for i in range(4):
            cols = model.neuron_function[layer] == i
            assert torch.linalg.matrix_rank(w_in[:, cols]).item() <= 1
            assert torch.linalg.matrix_rank(w_out[cols]).item() <= 1
            assert (w_in[1 : 1 + 4, cols] != 0).nonzero()[:, 0].unique().tolist() in ([], [i])


def test_loaded_gated_target_samples_its_own_inputs() -> None:
    loaded = load_target(TargetRef(name="gated-4"), "cpu")
    gen = torch.Generator().manual_seed(0)
    x = loaded.sample(20_000, gen)
    assert x.shape == (20_000, 1, 5) and loaded.model.n_outputs == 1
    assert x[..., 0].min() >= 0.0 and x[..., 0].max() <= 5.0
    bits = x[..., 1:]
    assert set(bits.unique().tolist()) == {0.0, 1.0}
    assert bits.mean().item() == pytest.approx(0.05, abs=0.005)  # sd of the mean: 0.0008
    one = loaded.sample(100, gen, "exactly_one_active")
    assert (one[..., 1:].sum(-1) == 1).all()
    assert loaded.feature_probability == 0.05 and loaded.value_range == (0.0, 5.0)
    # the network is within a few 1e-3 of the labels; mean squared error ~1e-6
    assert ((loaded.model(x) - loaded.labels(x)) ** 2).mean().item() < 1e-4
    other = load_target(TargetRef(name="gated-4", seed=1, feature_probability=0.5), "cpu")
    assert not torch.equal(other.model.coeffs, loaded.model.coeffs)
    assert other.sample(20_000, gen)[..., 1:].mean().item() == pytest.approx(0.5, abs=0.02)


def test_gated_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APD_CACHE_DIR", str(tmp_path))
    path = train_target("gated-4", seed=3, progress=False)
    meta = torch.load(path, weights_only=True)["metadata"]
    assert meta["steps"] == 0 and meta["final_loss"] < 1e-4  # hand-set: the loss is the interpolation error
    loaded = load_target(TargetRef(path=str(path)), "cpu")
    assert isinstance(loaded.model, GatedMLP) and (loaded.name, loaded.seed) == ("gated-4", 3)
    assert torch.equal(loaded.model.coeffs, GatedMLP(seed=3).coeffs)
    x = loaded.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(loaded.model(x), GatedMLP(seed=3)(x))
