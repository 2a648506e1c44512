"""Packs: members trained together along the instance axis equal the same settings trained alone."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from apd.data import Batches, sample_sparse_features
from apd.decompose import decompose
from apd.errors import ConfigError
from apd.methods.apd.config import APDConfig
from apd.pack import PackedAdam, PackRecord, check_members, decompose_pack, measure_pack_size, tile_target
from apd.run import run_decomposition, run_pack
from tests.methods.apd.conftest import trained_tms


def cfg(**kw: object) -> APDConfig:
    base = dict(
        target={"name": "tms-5-2"},
        C=5,
        topk=0.211,
        topk_recon_coeff=1.0,
        schatten_coeff=0.7,
        schatten_pnorm=1.0,
        lr=0.03,
        lr_warmup_pct=0.05,
        steps=40,
        batch_size=256,
        log_every=10,
        seed=0,
    )
    return APDConfig.model_validate(base | kw)


def batches(seed: int, n_instances: int = 2, batch_size: int = 256, device: str = "cpu") -> Batches:
    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return sample_sparse_features(
            n, n_instances, 5, feature_probability=0.05, value_range=(0, 1), generator=gen, device=device
        )

    return Batches(sample, batch_size, seed=seed, device=device)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


MEMBERS = [
    {},
    {"topk": 0.3, "schatten_coeff": 1.5, "lr": 0.01, "seed": 1},
    {"topk": 0.15, "topk_recon_coeff": 2.0, "param_match_coeff": 0.5, "seed": 2, "lr_schedule": "cosine"},
    {"lr": 0.05, "init_scale": 2.0, "seed": 3, "lr_warmup_pct": 0.0, "schatten_pnorm": 0.9},
]


@pytest.mark.parametrize("device", DEVICES)
def test_pack_of_four_equals_the_four_runs_alone(device: str) -> None:
    target = copy.deepcopy(trained_tms()).to(device)
    cfgs = [cfg(**m) for m in MEMBERS]
    alone = [decompose(c, target, batches(c.seed, device=device), progress=False) for c in cfgs]
    packed = decompose_pack(cfgs, target, [batches(c.seed, device=device) for c in cfgs], progress=False)
    for a, p in zip(alone, packed.values(), strict=True):
        assert p.status == a.status == "finished" and p.steps_done == a.steps_done
        assert [r.step for r in p.records] == [r.step for r in a.records]
        for ra, rp in zip(a.records, p.records, strict=True):
            assert rp.lr == ra.lr
            for key in ra.losses:
                assert rp.losses[key] == pytest.approx(ra.losses[key], rel=1e-5, abs=1e-8), key
            assert rp.stats == pytest.approx(ra.stats, rel=1e-6)
        for key, value in a.components.state_dict().items():
            torch.testing.assert_close(p.components.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.fixture
def tiny_path() -> Path:
    """A TMS 5-2 target trained for 300 steps, once per session (the tests' private cache)."""
    from apd.targets.train import train_target

    return train_target("tms-5-2", 0, steps=300, progress=False, device="cpu")


def run_cfg(path: Path, figures: bool = False, **kw: object) -> APDConfig:
    return cfg(target={"path": str(path)}, steps=30, batch_size=128, eval={"figures": figures}, **kw)


def test_pack_members_write_the_run_folders_of_their_solo_runs(tiny_path: Path, tmp_path: Path) -> None:
    cfgs = [run_cfg(tiny_path, **m) for m in MEMBERS[:3]] + [run_cfg(tiny_path, True, **MEMBERS[3])]
    alone = [run_decomposition(c, tmp_path / f"alone{j}", progress=False) for j, c in enumerate(cfgs)]
    ended: list[int] = []
    packed = run_pack(
        cfgs, [tmp_path / f"pack{j}" for j in range(4)], on_end=lambda j, r: ended.append(j), progress=False
    )
    assert sorted(ended) == [0, 1, 2, 3] and sorted(packed) == [0, 1, 2, 3]
    assert list((tmp_path / "pack3/figures").glob("*.png"))
    for j, a in enumerate(alone):
        solo, member = tmp_path / f"alone{j}", tmp_path / f"pack{j}"
        assert sorted(p.name for p in member.iterdir()) == sorted(p.name for p in solo.iterdir())
        assert sorted(p.name for p in member.glob("figures/*")) == sorted(p.name for p in solo.glob("figures/*"))
        assert (member / "config.yaml").read_text() == (solo / "config.yaml").read_text()
        m_solo, m_pack = (json.loads((d / "metrics.json").read_text()) for d in (solo, member))
        assert m_pack.keys() == m_solo.keys() and m_pack == packed[j].metrics
        for key, value in m_solo.items():
            if isinstance(value, float | list):
                assert m_pack[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert m_pack[key] == value, key
        w_solo, w_pack = (torch.load(d / "components.pt", weights_only=False) for d in (solo, member))
        assert w_pack.keys() == w_solo.keys()
        for key, value in w_solo["state_dict"].items():
            torch.testing.assert_close(w_pack["state_dict"][key], value, rtol=1e-5, atol=1e-6)
        assert a.status == packed[j].status == "finished"


def test_a_diverging_member_ends_alone_and_the_others_go_on(tiny_path: Path, tmp_path: Path) -> None:
    # member 1's lr blows its loss up within a few steps; 0 and 2 must not notice
    cfgs = [run_cfg(tiny_path), run_cfg(tiny_path, lr=1e30, lr_warmup_pct=0.0, seed=1), run_cfg(tiny_path, seed=2)]
    bad = run_decomposition(cfgs[1], tmp_path / "bad", progress=False)
    assert bad.status == "diverged"
    events: list[tuple[int, int | str]] = []
    packed = run_pack(
        cfgs,
        [tmp_path / f"m{j}" for j in range(3)],
        on_step=lambda records: events.extend((j, r.step) for j, r in records.items()),
        on_end=lambda j, r: events.append((j, r.status)),
        progress=False,
    )
    assert packed[1].status == "diverged" and packed[1].steps_done == bad.steps_done
    assert packed[1].error == bad.error and packed[1].metrics == bad.metrics
    assert (0, 30) in events and events.index((1, "diverged")) < events.index((0, 30)), events
    assert max(s for j, s in events if j == 1 and isinstance(s, int)) < bad.steps_done + 10
    assert json.loads((tmp_path / "m1/metrics.json").read_text())["status"] == "diverged"
    for j in (0, 2):
        solo = run_decomposition(cfgs[j], None, progress=False)
        assert packed[j].status == "finished" and packed[j].metrics["mmcs"] == pytest.approx(solo.metrics["mmcs"])


def test_members_that_differ_in_shape_or_term_are_refused() -> None:
    check_members([cfg(), cfg(topk=0.3, lr=0.1, seed=4, eval={"mmcs_min": 0.5})])
    with pytest.raises(ConfigError, match=r"^pack: members differ in C \(5 vs 6\)"):
        check_members([cfg(), cfg(C=6)])
    with pytest.raises(ConfigError, match=r"^pack: members differ in steps"):
        check_members([cfg(), cfg(steps=50)])
    with pytest.raises(ConfigError, match=r"^pack: members differ in act_recon_coeff \(None vs 1.0\)"):
        check_members([cfg(), cfg(act_recon_coeff=1.0)])


def test_tiling_repeats_each_instance_per_member() -> None:
    target = trained_tms()
    tiled = tile_target(target, 3)
    assert tiled.n_instances == 6 and tiled.W.shape == (6, 5, 2) and target.W.shape == (2, 5, 2)
    torch.testing.assert_close(tiled.W[4:], target.W)


def test_packed_adam_is_adamw_with_a_learning_rate_per_member() -> None:
    torch.manual_seed(0)
    lrs = [0.01, 0.003]
    alone = [torch.nn.Parameter(torch.randn(2, 3, 4)) for _ in lrs]
    packed = torch.nn.Parameter(torch.cat([p.detach() for p in alone]))
    opts = [torch.optim.AdamW([p], lr=lr, weight_decay=0.0) for p, lr in zip(alone, lrs, strict=True)]
    adam = PackedAdam([packed], members=2)
    for t in range(1, 20):
        grads = [torch.randn(2, 3, 4) for _ in lrs]
        for p, g, opt in zip(alone, grads, opts, strict=True):
            p.grad = g
            opt.step()
        packed.grad = torch.cat(grads)
        adam.step(torch.tensor(adam.step_sizes(lrs, t)))
    assert torch.equal(packed, torch.cat(alone))  # op for op: bitwise on the CPU


def test_a_pack_resumes_from_its_snapshot_as_if_unbroken() -> None:
    """Member 1 diverges early and leaves; a snapshot at step 20 holds the other two, and resuming
    from it gives their records and components of the unbroken pack."""
    target = trained_tms()
    cfgs = [cfg(), cfg(lr=1e30, lr_warmup_pct=0.0, seed=1), cfg(topk=0.3, seed=2)]
    saved: dict = {}

    def keep(record: PackRecord) -> None:
        if record.step == 20:
            buf = io.BytesIO()
            torch.save(record.state(), buf)
            buf.seek(0)
            saved.update(torch.load(buf, weights_only=False))

    unbroken = decompose_pack(cfgs, target, [batches(c.seed) for c in cfgs], on_step=keep, progress=False)
    assert unbroken[1].status == "diverged" and saved["members"] == [0, 2]
    resumed = decompose_pack(cfgs, target, [batches(100 + c.seed) for c in cfgs], state=saved, progress=False)
    assert sorted(resumed) == [0, 2]
    for j in (0, 2):
        assert [r.step for r in resumed[j].records] == [30, 40]  # step 20 is not repeated
        for a, b in zip(unbroken[j].records[3:], resumed[j].records, strict=True):
            assert a.losses == b.losses
        for key, value in unbroken[j].components.state_dict().items():
            assert torch.equal(resumed[j].components.state_dict()[key], value)


def test_a_target_without_an_instance_axis_is_refused() -> None:
    from apd.targets.gated import GatedMLP

    with pytest.raises(ConfigError, match=r"^pack: target GatedMLP cannot be packed"):
        tile_target(GatedMLP(), 2)


def test_auto_pack_size_is_one_on_a_cpu() -> None:
    assert measure_pack_size(cfg(device="cpu")) == 1


def test_a_residual_mlp_packs_and_each_member_trains_as_alone() -> None:
    """Its label coefficients are shared by every instance (`shared_tensors`): tiling leaves them."""
    from apd.targets.resid_mlp import ResidMLP

    torch.manual_seed(0)
    target = ResidMLP(6, 16, 4, n_layers=1, n_instances=1, label_coeffs=torch.linspace(1, 2, 6))
    target.requires_grad_(False)
    tiled = tile_target(target, 3)
    assert tiled.n_instances == 3 and torch.equal(tiled.label_coeffs, target.label_coeffs)
    base = dict(target={"name": "resid-mlp-1"}, C=8, topk=1.0, topk_recon_coeff=1.0, act_recon_coeff=1.0)
    base |= dict(schatten_coeff=1.0, schatten_pnorm=0.9, lr=1e-3, steps=12, batch_size=64, log_every=4)
    cfgs = [APDConfig.model_validate(base | m) for m in ({"seed": 0}, {"seed": 1, "topk": 1.5, "lr": 3e-3})]

    def stream(seed: int) -> Batches:
        def sample(n: int, gen: torch.Generator) -> torch.Tensor:
            return sample_sparse_features(n, 1, 6, feature_probability=0.2, value_range=(-1, 1), generator=gen)

        return Batches(sample, 64, seed=seed, device="cpu")

    alone = [decompose(c, target, stream(c.seed), progress=False) for c in cfgs]
    packed = decompose_pack(cfgs, target, [stream(c.seed) for c in cfgs], progress=False)
    for a, p in zip(alone, packed.values(), strict=True):
        for ra, rp in zip(a.records, p.records, strict=True):
            assert rp.losses == pytest.approx(ra.losses, rel=1e-5, abs=1e-9)
