"""User-supplied linear+ReLU stacks from .pt and .npz files, and bad target files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apd.config import TargetRef
from apd.errors import ConfigError
from apd.targets import load_target

RNG = np.random.default_rng(0)
W0, B0 = RNG.normal(size=(6, 4)).astype(np.float32), RNG.normal(size=4).astype(np.float32)
W1 = RNG.normal(size=(4, 3)).astype(np.float32)


def numpy_forward(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W0 + B0, 0.0) @ W1


def write(path: Path, entries: dict[str, object]) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **entries)  # type: ignore[arg-type]
    else:
        torch.save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in entries.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_stack_matches_numpy_forward(tmp_path: Path, suffix: str) -> None:
    path = write(
        tmp_path / f"net{suffix}",
        {"W0": W0, "b0": B0, "W1": W1, "feature_probability": 0.2, "value_range": [-1.0, 2.0]},
    )
    loaded = load_target(TargetRef(path=str(path)), "cpu")
    model = loaded.model
    assert (model.n_instances, model.n_inputs, model.n_outputs) == (1, 6, 3)
    assert [layer.name for layer in model.layers] == ["layer_0", "layer_1"]
    assert model.param_shapes() == {"layer_0": (6, 4), "layer_1": (4, 3)} and model.default_m() == 4
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = loaded.sample(512, torch.Generator().manual_seed(0))
    assert x.shape == (512, 1, 6) and x.min() >= -1.0 and x.max() <= 2.0
    assert (x != 0).float().mean().item() == pytest.approx(0.2, abs=0.03)
    np.testing.assert_allclose(model(x)[:, 0].numpy(), numpy_forward(x[:, 0].numpy()), rtol=1e-5, atol=1e-5)
    assert (loaded.name, loaded.feature_probability, loaded.value_range, loaded.spec.kind) == (
        "net",
        0.2,
        (-1.0, 2.0),
        "file",
    )


def test_defaults_overrides_and_instances(tmp_path: Path) -> None:
    w = np.stack([W0, 2 * W0])  # two instances; no biases
    path = write(tmp_path / "net.npz", {"W0": w, "W1": np.stack([W1, W1])})
    loaded = load_target(TargetRef(path=str(path), feature_probability=0.5), "cpu")
    assert loaded.model.n_instances == 2
    assert (loaded.feature_probability, loaded.value_range) == (0.5, (0.0, 1.0))
    x = torch.rand(8, 2, 6)
    out = loaded.model(x)
    np.testing.assert_allclose(out[:, 1].numpy(), np.maximum(x[:, 1].numpy() @ (2 * W0), 0) @ W1, rtol=1e-5, atol=1e-5)
    assert loaded.spec.kind == "file" and loaded.spec.feature_probability == 0.05  # the file default


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"W0": W0, "W2": W1}, r"expected weights W0..W\{L-1\}"),
        ({"W0": W0, "W1": W0}, "W1: d_in 6 != d_out 4 of W0"),
        ({"W0": W0, "b1": B0}, r"a bias b\{l\} has no weight"),
        ({"W0": W0, "b0": np.zeros(5, np.float32)}, r"b0: expected \(4,\)"),
        ({"W0": W0, "weights": W0}, "unknown entry 'weights'"),
        ({"W0": np.full((2, 2), np.nan, np.float32)}, "W0: expected finite real numbers"),
        ({"W0": W0, "feature_probability": 2.0}, "feature_probability must be in"),
    ],
)
def test_bad_stacks_name_the_file_and_entry(tmp_path: Path, entries: dict[str, object], message: str) -> None:
    path = write(tmp_path / "bad.npz", entries)
    with pytest.raises(ConfigError, match=f"bad.npz: {message}"):
        load_target(TargetRef(path=str(path)), "cpu")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.pt: no such file"):
        load_target(TargetRef(path=str(tmp_path / "nope.pt")), "cpu")
    for name in ("junk.pt", "junk.npz"):
        (tmp_path / name).write_bytes(b"definitely not a tensor file")
        with pytest.raises(ConfigError, match=f"{name}: not a readable target file"):
            load_target(TargetRef(path=str(tmp_path / name)), "cpu")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"list\.pt: expected a dict of arrays"):
        load_target(TargetRef(path=str(tmp_path / "list.pt")), "cpu")
