"""User files: linear+ReLU stacks and TMS-format networks from .pt and .npz, their ground truth, and bad
files (each a one-line error naming the file and the entry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apd.config import TargetRef
from apd.errors import ConfigError
from apd.targets import FAMILIES, load_target
from apd.targets.tms import TMS

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
        ({"W0": W0, "W2": W1}, r"expected weights W0..W2 \(missing W1\)"),
        ({"b0": B0}, r"expected weights W0, W1, ... \(got b0\)"),
        ({"W0": W0, "W1": W0}, "W1: d_in 6 != d_out 4 of W0"),
        ({"W0": W0, "b1": B0}, r"b1: a bias without a weight W1 \(the weights are W0\)"),
        ({"W0": W0, "W1": W1, "b3": B0}, r"b3: a bias without a weight W3 \(the weights are W0..W1\)"),
        ({"W0": W0, "b0": np.zeros(5, np.float32)}, r"b0: expected \(4,\) to match W0's d_out"),
        ({"W0": W0, "weights": W0}, "unknown entry 'weights'"),
        ({"W0": np.full((2, 2), np.nan, np.float32)}, r"W0: expected finite numbers \(got 4 NaN of 4 values\)"),
        (
            {"W0": np.array([[1.0, np.inf], [np.nan, 0.0]], np.float32)},
            r"W0: expected finite numbers \(got 1 NaN, 1 infinite of 4 values\)",
        ),
        ({"W0": np.zeros((0, 4), np.float32)}, r"W0: every dimension must be > 0 \(got shape \(0, 4\)\)"),
        ({"W0": np.zeros((6, 4, 2, 2), np.float32)}, r"W0: expected 2 or 3 dimensions \(got shape \(6, 4, 2, 2\)\)"),
        ({"W0": np.stack([W0, W0]), "W1": np.stack([W1] * 3)}, "W1: 3 instances, but W0 has 2"),
        ({"W0": W0, "b0": np.zeros((3, 4), np.float32)}, "b0: 3 instances, but W0 has 1"),
        ({"W0": W0, "feature_probability": 2.0}, "feature_probability must be in"),
        ({"W0": W0, "kind": "mlp"}, "kind: unknown format 'mlp'; one of file, tms"),
        ({"W0": W0, "kind": "gated"}, "kind: gated targets have no user-file format"),
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


def test_a_directory_is_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "nets").mkdir()
    with pytest.raises(ConfigError, match=r"nets: is a directory, not a target file"):
        load_target(TargetRef(path=str(tmp_path / "nets")), "cpu")


# ---------------------------------------------------------------------------------------------
# Ground truth and TMS-shaped files


GT = np.einsum("jk,kh->jkh", np.eye(6, dtype=np.float32), W0)  # feature j: row j of W0


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_ground_truth_entry(tmp_path: Path, suffix: str) -> None:
    entries: dict[str, object] = {"W0": W0, "W1": W1}
    if suffix == ".pt":
        entries["ground_truth"] = {"W0": torch.from_numpy(GT)}
    else:
        entries["ground_truth.W0"] = GT
    model = load_target(TargetRef(path=str(write(tmp_path / f"net{suffix}", entries))), "cpu").model
    truth = FAMILIES["file"].mechanisms(model)
    assert truth is not None and list(truth) == ["layer_0"] and truth["layer_0"].shape == (1, 6, 6, 4)
    assert torch.equal(truth["layer_0"][0], torch.from_numpy(GT))


@pytest.mark.parametrize(
    ("gt", "message"),
    [
        ({"ground_truth.W5": GT}, r"ground_truth.W5: no weight W5 \(the weights are W0, W1\)"),
        ({"ground_truth.W0": GT[:, :, :3]}, r"ground_truth.W0: each mechanism must have W0's shape \(6, 4\)"),
        (
            {"ground_truth.W0": GT, "ground_truth.W1": np.zeros((5, 4, 3), np.float32)},
            "ground_truth.W1: 5 mechanisms, but ground_truth.W0 has 6",
        ),
        (
            {"ground_truth.W0": np.zeros((2, 6, 4), np.float32)},
            "ground_truth: mechanism 0 is zero in every given layer",
        ),
        ({"ground_truth.W0": np.full((2, 6, 4), np.nan, np.float32)}, "ground_truth.W0: expected finite numbers"),
        ({"ground_truth.W0": np.stack([GT] * 3)}, "ground_truth.W0: 3 instances, but W0 has 1"),
    ],
)
def test_bad_ground_truth_names_the_entry(tmp_path: Path, gt: dict[str, object], message: str) -> None:
    path = write(tmp_path / "gt.npz", {"W0": W0, "W1": W1, **gt})
    with pytest.raises(ConfigError, match=f"gt.npz: {message}"):
        load_target(TargetRef(path=str(path)), "cpu")


TMS_W = RNG.normal(size=(2, 5, 2)).astype(np.float32)  # 2 instances of TMS 5-2
TMS_B = np.full((2, 5), -0.3, np.float32)


def tms_forward(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.einsum("bif,ifh, igh->big", x, TMS_W, TMS_W) + TMS_B, 0.0)


def test_tms_saved_as_a_stack_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tms.npz", {"W0": TMS_W, "b0": np.zeros((2, 2), np.float32), "W1": TMS_W.transpose(0, 2, 1)}
    )
    with pytest.raises(ConfigError, match=r"tms\.npz: W1 is W0 transposed: this looks like a TMS .* kind: 'tms'"):
        load_target(TargetRef(path=str(path)), "cpu")
    # an explicit `kind: file` says the stack (ReLU in the middle, none at the end) is meant
    write(tmp_path / "stack.npz", {"W0": TMS_W, "W1": TMS_W.transpose(0, 2, 1), "kind": "file"})
    assert load_target(TargetRef(path=str(tmp_path / "stack.npz")), "cpu").model.kind == "file"


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tms_format(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"tms{suffix}", {"kind": "tms", "W": TMS_W, "b_final": TMS_B, "feature_probability": 0.1})
    loaded = load_target(TargetRef(path=str(path)), "cpu")
    assert isinstance(loaded.model, TMS) and loaded.family.kind == "tms" and loaded.spec.kind == "file"
    assert (loaded.model.n_instances, loaded.model.n_features, loaded.model.n_hidden) == (2, 5, 2)
    assert loaded.feature_probability == 0.1
    x = loaded.sample(64, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(loaded.model(x).numpy(), tms_forward(x.numpy()), rtol=1e-5, atol=1e-6)
    assert torch.equal(loaded.labels(x), x.abs())


def test_tms_format_with_hidden_layers_and_errors(tmp_path: Path) -> None:
    hidden = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)  # a swap, shared by both instances
    path = write(tmp_path / "tid.npz", {"kind": "tms", "W": TMS_W, "hidden0": hidden})
    model = load_target(TargetRef(path=str(path)), "cpu").model
    assert (
        isinstance(model, TMS) and len(model.hidden) == 1 and torch.equal(model.hidden[0][1], torch.from_numpy(hidden))
    )
    cases = {
        "a.npz": ({"kind": "tms", "b_final": TMS_B}, r"W: required for kind tms"),
        "b.npz": ({"kind": "tms", "W": TMS_W, "b_final": np.zeros(4, np.float32)}, r"b_final: expected \(5,\)"),
        "c.npz": ({"kind": "tms", "W": TMS_W, "hidden1": hidden}, r"hidden layers must be hidden0..hidden0"),
        "d.npz": ({"kind": "tms", "W": TMS_W, "hidden0": np.eye(3, dtype=np.float32)}, r"hidden0: expected \(2, 2\)"),
        "e.npz": ({"kind": "tms", "W": TMS_W, "W0": W0}, "unknown entry 'W0' for kind tms"),
        "f.npz": (
            {"kind": "tms", "W": TMS_W, "b_final": np.zeros((3, 5), np.float32)},
            "b_final: 3 instances, but W has 2",
        ),
    }
    for name, (entries, message) in cases.items():
        with pytest.raises(ConfigError, match=f"{name}: {message}"):
            load_target(TargetRef(path=str(write(tmp_path / name, entries))), "cpu")
