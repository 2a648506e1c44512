"""Training recipes, the file cache and loading by name or path."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from apd.config import TargetRef
from apd.errors import ConfigError
from apd.targets import (
    TARGETS,
    FileSpec,
    ResidMLPSpec,
    TMSSpec,
    TrainRecipe,
    cache_path,
    get_spec,
    load_target,
    resolve_device,
    train,
    train_target,
    train_target_main,
)
from apd.targets.tms import TMS
from apd.targets.train import FORMAT, save_target

TINY = TMSSpec(
    n_features=5, n_hidden=2, n_instances=2, train=TrainRecipe(steps=30, batch_size=64, lr=5e-3, lr_schedule="linear")
)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(TARGETS, "tiny-tms", TINY)
    return "tiny-tms"


def pentagons(W: torch.Tensor) -> torch.Tensor:
    """Per instance: 5 feature vectors 72 +- 3 degrees apart with norms in (1, 1.25)."""
    angles = torch.atan2(W[..., 1], W[..., 0]).sort(-1).values
    gaps = torch.cat([angles.diff(dim=-1), angles[:, :1] + 2 * math.pi - angles[:, -1:]], -1)
    norms = W.norm(dim=-1)
    regular = (gaps - 2 * math.pi / 5).abs().amax(-1) < math.radians(3)
    return regular & (norms.amin(-1) > 1.0) & (norms.amax(-1) < 1.25)


def test_tms_training_reduces_loss_and_is_seeded() -> None:
    spec = get_spec("tms-40-10")
    assert isinstance(spec, TMSSpec)
    before = train(spec, 0, steps=0, progress=False)
    after = train(spec, 0, steps=100, progress=False)
    assert after.final_loss < 0.8 * before.final_loss  # measured 0.0151 vs 0.0266
    assert torch.equal(
        train(spec, 0, steps=20, progress=False).model.W, train(spec, 0, steps=20, progress=False).model.W
    )
    assert not torch.equal(train(spec, 1, steps=0, progress=False).model.W, before.model.W)


def test_tms_5_2_learns_pentagons() -> None:
    """Sparse features (p = 0.05) in 2 dims: each instance stores all 5 features as a regular pentagon
    (norm ~1.13, bias ~-0.24) or, early in training, 4 of them as a square. After 1000 steps
    (linear decay) seeds 0/1/2 give 8/10/8 pentagons of 12; the full recipe gives 12 (slow test)."""
    spec = get_spec("tms-5-2")
    trained = train(spec, 0, steps=1000, progress=False)  # type: ignore[arg-type]
    assert isinstance(trained.model, TMS)
    assert pentagons(trained.model.W.detach()).sum().item() >= 6
    assert (trained.model.b_final[pentagons(trained.model.W.detach())] < -0.1).all()


@pytest.mark.slow
def test_tms_5_2_full_recipe_all_pentagons(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the session cache (tests/conftest.py), so other tests reuse this 5000-step training
    monkeypatch.setenv("APD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "apd-cache"))
    loaded = load_target(TargetRef(name="tms-5-2"), "cpu")
    assert isinstance(loaded.model, TMS)
    W = loaded.model.W.detach()
    assert pentagons(W).all()
    assert W.norm(dim=-1).flatten().tolist() == pytest.approx([1.13] * 60, abs=0.02)
    assert loaded.model.b_final.flatten().tolist() == pytest.approx([-0.24] * 60, abs=0.02)


def test_resid_mlp_training_reduces_both_losses() -> None:
    recipe = TrainRecipe(steps=200, batch_size=256, lr=1e-2, lr_schedule="cosine")
    spec = ResidMLPSpec(n_features=20, d_embed=40, d_mlp=10, feature_probability=0.1, train=recipe)
    for s in (spec, spec.model_copy(update={"loss_type": "resid"})):
        before = train(s, 0, steps=0, progress=False).final_loss
        assert train(s, 0, progress=False).final_loss < 0.6 * before  # measured ratios 0.43, 0.31


def test_train_target_caches_atomically_and_reuses(cache: Path) -> None:
    path = train_target("tms-5-2", 3, steps=20, progress=False)
    assert path == cache / "tms-5-2-seed3-steps20.pt" == cache_path("tms-5-2", 3, 20)
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp file left behind
    data = torch.load(path, weights_only=True)
    assert data["format"] == FORMAT and (data["name"], data["seed"]) == ("tms-5-2", 3)
    assert data["spec"] == get_spec("tms-5-2").to_dict()
    assert set(data["state_dict"]) == {"W", "b_final"}
    assert data["metadata"]["steps"] == 20 and data["metadata"]["final_loss"] > 0
    assert {"date", "train_seconds", "device", "torch"} <= set(data["metadata"])
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert train_target("tms-5-2", 3, steps=20) == path
    assert time.perf_counter() - start < 0.5 and path.stat().st_mtime_ns == mtime
    train_target("tms-5-2", 3, steps=20, force=True, progress=False)
    assert path.stat().st_mtime_ns != mtime


def test_load_by_name_trains_on_a_miss_then_reuses(tiny_registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_target(TargetRef(name=tiny_registered, seed=2), "cpu")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "tiny-tms (seed 2) is not cached" in out and "training it (30 steps)" in out
    assert cache_path(tiny_registered, 2).is_file()
    again = load_target(TargetRef(name=tiny_registered, seed=2), "cpu")
    assert capsys.readouterr().out == ""
    assert torch.equal(again.model.W, loaded.model.W)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.device == torch.device("cpu") and (loaded.name, loaded.seed) == ("tiny-tms", 2)


def test_load_uses_the_cached_file(capsys: pytest.CaptureFixture[str]) -> None:
    spec = get_spec("tms-40-10")
    assert isinstance(spec, TMSSpec)
    trained = train(spec, 0, steps=5, progress=False)
    save_target(cache_path("tms-40-10", 0), name="tms-40-10", seed=0, spec=spec, trained=trained)
    loaded = load_target(TargetRef(name="tms-40-10"), "cpu")
    assert capsys.readouterr().out == ""
    assert isinstance(loaded.model, TMS) and torch.equal(loaded.model.W, trained.model.W)


def test_loaded_file_needs_no_registry(tiny_registered: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = train_target(tiny_registered, 1, progress=False)
    monkeypatch.delitem(TARGETS, tiny_registered)
    loaded = load_target(TargetRef(path=str(path), feature_probability=0.5), "cpu")
    assert (loaded.name, loaded.seed, loaded.spec) == ("tiny-tms", 1, TINY)
    assert (loaded.feature_probability, loaded.value_range) == (0.5, (0.0, 1.0))
    x = loaded.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 5) and torch.equal(loaded.labels(x), x)


def test_batches_resume_from_their_state(tiny_registered: str) -> None:
    loaded = load_target(TargetRef(name=tiny_registered, data_generation_type="exactly_two_active"), "cpu")
    batches = loaded.batches(16, seed=7)
    next(batches)
    state = batches.state_dict()
    expected = next(batches)
    assert ((expected != 0).sum(-1) == 2).all()
    fresh = loaded.batches(16, seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(next(fresh), expected)


def test_bad_trained_files_name_the_file(tiny_registered: str, tmp_path: Path) -> None:
    good = torch.load(train_target(tiny_registered, progress=False), weights_only=True)
    cases = {
        "version.pt": ({**good, "format": "apd-sweeps-target/9"}, "unsupported target file format"),
        "spec.pt": (
            {**good, "spec": {**good["spec"], "n_hidden": -1}},
            r"spec: tms.n_hidden: Input should be greater than 0 \(got -1\)",
        ),
        "weights.pt": ({**good, "state_dict": {"W": torch.zeros(1)}}, "state_dict does not match its spec"),
    }
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(ConfigError, match=f"{name}: {message}"):
            load_target(TargetRef(path=str(tmp_path / name)), "cpu")
    stale = {
        **good,
        "spec": {**good["spec"], "n_instances": 3},
        "state_dict": {"W": torch.zeros(3, 5, 2), "b_final": torch.zeros(3, 5)},
    }
    torch.save(stale, cache_path(tiny_registered, 4))
    with pytest.raises(
        ConfigError, match=r"tiny-tms-seed4\.pt: trained for another spec of tiny-tms; .* --seed 4 --force"
    ):
        load_target(TargetRef(name=tiny_registered, seed=4), "cpu")
    cache_path(tiny_registered, 5).write_bytes(b"truncated")
    with pytest.raises(ConfigError, match=r"tiny-tms-seed5.pt: not a readable target file"):
        load_target(TargetRef(name=tiny_registered, seed=5), "cpu")


def test_errors_for_names_devices_and_files(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'nope'; known: .*gated-4"):
        load_target(TargetRef(name="nope"), "cpu")
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        train_target("nope")
    monkeypatch.setitem(TARGETS, "user", FileSpec(path="/nonexistent/net.pt"))
    with pytest.raises(ConfigError, match="nothing to train"):
        train_target("user")
    with pytest.raises(ConfigError, match=r"/nonexistent/net\.pt: no such file"):
        load_target(TargetRef(name="user"), "cpu")
    with pytest.raises(ConfigError, match=r"device: not a torch device \(got 'gpu0'\)"):
        resolve_device("gpu0")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_train_target_main_reports_path_and_loss(tiny_registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_target_main(tiny_registered, 0, False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny-tms (seed 0): trained in") and lines[0].endswith(str(cache_path(tiny_registered)))
    assert lines[1].startswith("final loss ") and lines[1].endswith("after 30 steps")
    assert train_target_main(tiny_registered, 0, False) == 0
    assert "already cached" in capsys.readouterr().out
