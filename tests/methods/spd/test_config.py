"""SPDConfig: the paper's experiments load with their settings; bad settings get one line naming the field."""

from pathlib import Path

import pytest

from apd.cli import main
from apd.config import load_config
from apd.methods import method_of
from apd.methods.spd import SPD, SPDConfig


@pytest.mark.parametrize(
    ("name", "target", "C", "d_gate", "beta3", "p", "lr", "schedule", "steps", "batch"),
    [
        ("spd-tms-5-2", "tms-5-2", 20, 16, 3e-3, 1.0, 1e-3, "cosine", 40_000, 4096),
        ("spd-tms-40-10", "tms-40-10", 200, 16, 1e-4, 2.0, 1e-3, "cosine", 40_000, 4096),
        ("spd-tms-5-2-id", "tms-5-2-id", 20, 16, 3e-3, 1.0, 1e-3, "cosine", 40_000, 4096),
        ("spd-tms-40-10-id", "tms-40-10-id", 200, 16, 1e-4, 2.0, 1e-3, "cosine", 40_000, 4096),
        ("spd-resid-mlp-1", "resid-mlp-1", 100, 16, 1e-5, 2.0, 2e-3, "constant", 30_000, 2048),
        ("spd-resid-mlp-2", "resid-mlp-2", 400, 16, 1e-5, 2.0, 1e-3, "constant", 50_000, 2048),
        ("spd-resid-mlp-2-code", "resid-mlp-2", 400, 16, 2e-5, 2.0, 1e-3, "constant", 50_000, 2048),
        ("spd-resid-mlp-3", "resid-mlp-3", 500, 128, 5e-6, 2.0, 1e-3, "constant", 200_000, 2048),
        ("spd-resid-mlp-3-code", "resid-mlp-3", 500, 128, 5e-6, 2.0, 1e-3, "constant", 100_000, 2048),
    ],
)
def test_experiments_hold_the_paper_settings(
    name: str, target: str, C: int, d_gate: int, beta3: float, p: float, lr: float, schedule: str, steps: int,
    batch: int,
) -> None:  # fmt: skip
    cfg = load_config(name)
    assert isinstance(cfg, SPDConfig) and isinstance(method_of(cfg), SPD)
    assert cfg.target.name == target
    assert (cfg.C, cfg.n_ci_mlp_neurons, cfg.importance_minimality_coeff, cfg.pnorm) == (C, d_gate, beta3, p)
    assert (cfg.lr, cfg.lr_schedule, cfg.lr_warmup_pct, cfg.steps, cfg.batch_size) == (lr, schedule, 0.0, steps, batch)
    assert (cfg.faithfulness_coeff, cfg.stochastic_recon_coeff, cfg.stochastic_recon_layerwise_coeff) == (1, 1, 1)
    assert cfg.n_mask_samples == 1 and cfg.out_recon_coeff is None  # the resid yaml's 0.0 pass is skipped
    assert (cfg.tied_mode, cfg.lower_sigmoid, cfg.init, cfg.implementation) == (
        "aliased",
        "paper",
        "projection",
        "fast",
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "C=0"], "C: Input should be greater than 0 (got 0)"),
        (["--set", "n_ci_mlp_neurons=-1"], "n_ci_mlp_neurons: Input should be greater than or equal to 0 (got -1)"),
        (["--set", "pnorm=0"], "pnorm: Input should be greater than 0 (got 0)"),
        (["--set", "pnorm=null"], "importance_minimality_coeff needs pnorm"),
        (["--set", "n_mask_samples=0"], "n_mask_samples: Input should be greater than 0 (got 0)"),
        (["--set", "stochastic_recon_coeff=-1"], "stochastic_recon_coeff: Input should be greater than or equal to 0"),
        (["--set", "tied_mode=both"], "tied_mode: Input should be 'aliased' or 'shared' (got 'both')"),
        (["--set", "lower_sigmoid=clamp"], "lower_sigmoid: Input should be 'paper' or 'main'"),
        (["--set", "output_loss_type=l1"], "output_loss_type: Input should be 'mse' or 'kl'"),
        (["--set", "topk=0.2"], "topk: unknown key"),  # an APD key
        (["--set", "importance_minimality_coef=1"], "importance_minimality_coef: unknown key"),
        (["--set", "implementation=naive", "--set", "zero_rows=skip"], "zero_rows: skip needs implementation: fast"),
        (
            [
                f"--set={k}=0"
                for k in (
                    "faithfulness_coeff",
                    "stochastic_recon_coeff",
                    "stochastic_recon_layerwise_coeff",
                    "importance_minimality_coeff",
                )
            ],
            "faithfulness_coeff stochastic_recon_coeff stochastic_recon_layerwise_coeff",
        ),
        (["--set", "method=xpd"], "method: unknown method 'xpd'; did you mean 'spd'? known: apd, spd"),
    ],
)
def test_bad_settings_get_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    code = main(["decompose", "spd-tms-5-2", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_absent_coefficient_means_the_term_is_off() -> None:
    cfg = load_config("spd-tms-5-2", {"recon_coeff": 0.0, "out_recon_coeff": None})
    assert cfg.coeff("recon_coeff") == 0.0 and cfg.coeff("out_recon_coeff") == 0.0
    assert cfg.coeff("importance_minimality_coeff") == 3e-3
