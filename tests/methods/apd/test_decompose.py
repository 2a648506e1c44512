import pytest
import torch

from apd.config import DecomposeConfig
from apd.data import Batches, sample_sparse_features
from apd.decompose import StepRecord, decompose
from apd.methods.apd.components import Components
from apd.methods.apd.config import APDConfig


def cfg(**kw: object) -> DecomposeConfig:
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


def batches(n_instances: int, batch_size: int = 256, seed: int = 0) -> Batches:
    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return sample_sparse_features(n, n_instances, 5, feature_probability=0.05, value_range=(0, 1), generator=gen)

    return Batches(sample, batch_size, seed=seed, device="cpu")


def test_losses_fall_on_a_real_decomposition(tms52) -> None:
    result = decompose(cfg(steps=200, log_every=50), tms52, batches(2), progress=False)
    assert result.status == "finished" and result.steps_done == 200
    steps = [r.step for r in result.records]
    assert steps == [0, 50, 100, 150, 200]
    first, last = result.records[0].losses, result.records[-1].losses
    assert last["total_loss"] < 0.2 * first["total_loss"]
    assert last["faithfulness_loss"] < 0.1 * first["faithfulness_loss"]
    # batch top-k keeps int(0.211 * 256) = 54 of 256 * 5 slots: 54 / 256 components per sample
    assert result.records[-1].stats["mean_active"] == pytest.approx(54 / 256)


def test_naive_and_fast_steps_give_identical_losses(tms52) -> None:
    fast = decompose(cfg(), tms52, batches(2), progress=False)
    naive = decompose(cfg(implementation="naive"), tms52, batches(2), progress=False)
    for a, b in zip(fast.records, naive.records, strict=True):
        for key in a.losses:
            if key != "out_recon_loss":
                assert a.losses[key] == pytest.approx(b.losses[key], rel=1e-5, abs=1e-9), key


def test_resume_from_a_snapshot_matches_an_unbroken_run(tms52) -> None:
    unbroken = decompose(cfg(), tms52, batches(2), progress=False)
    saved: dict = {}

    def keep_step_20(record: StepRecord) -> None:
        if record.step == 20:
            saved.update(torch.load(_roundtrip(record.state()), weights_only=False))

    first = decompose(cfg(), tms52, batches(2), on_step=keep_step_20, should_stop=lambda: bool(saved), progress=False)
    assert first.status == "stopped" and first.steps_done == 20
    resumed = decompose(cfg(), tms52, batches(2, seed=123), state=saved, progress=False)
    assert [r.step for r in resumed.records] == [30, 40]  # step 20 is not repeated
    for a, b in zip(unbroken.records[3:], resumed.records, strict=True):
        assert a.losses == b.losses


def _roundtrip(state: dict):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_nan_loss_ends_the_run_as_diverged(tms52) -> None:
    result = decompose(cfg(lr=1e30, lr_warmup_pct=0.0), tms52, batches(2), progress=False)
    assert result.status == "diverged"
    assert result.error is not None and result.error.startswith(f"diverged at step {result.steps_done}:")
    assert 0 < result.steps_done <= 40


@pytest.mark.parametrize("chunk", [None, 1])
def test_unit_norm_columns_and_projected_gradients(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:  # one component per pass, as for large factors
        monkeypatch.setattr("apd.methods.apd.components.CHUNK_ELEMENTS", chunk)
    comps = Components({"w": (4, 3)}, n_instances=2, C=3, m=2)
    comps.normalize_A_()
    torch.testing.assert_close(comps.A["w"].norm(dim=-2), torch.ones(2, 3, 2))
    comps.A["w"].grad = torch.randn_like(comps.A["w"])
    comps.project_A_grads_()
    # the remaining gradient is orthogonal to each unit column
    dots = (comps.A["w"].grad * comps.A["w"]).sum(-2)
    torch.testing.assert_close(dots, torch.zeros_like(dots), atol=1e-6, rtol=0)
