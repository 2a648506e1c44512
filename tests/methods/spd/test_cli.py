"""`apd decompose spd-...` end to end: the run folder, metrics through the shared evaluation, resume."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from apd.cli import main
from apd.config import load_config
from apd.methods.spd import SPD
from apd.run import run_decomposition
from apd.targets import load_target
from apd.targets.registry import get_spec
from apd.targets.train import save_target, train


@pytest.fixture(scope="module")
def tms_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TMS 5-2 (12 instances) trained with the recipe, shortened to 600 steps."""
    path = tmp_path_factory.mktemp("targets") / "tms-5-2-short.pt"
    spec = get_spec("tms-5-2")
    save_target(path, name="tms-5-2", seed=0, spec=spec, trained=train(spec, 0, steps=600, progress=False))
    return path


SMALL = {"steps": 40, "batch_size": 256, "log_every": 20}


def test_decompose_writes_the_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, tms_file: Path) -> None:
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in {"target.name": "null", "target.path": tms_file, **SMALL}.items()]
    argv = ["decompose", "spd-tms-5-2", "--out", str(out), "--quiet"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert "status=finished" in printed and "mmcs=" in printed and f"wrote {out}/" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps_done"] == 40
    for key in ("total_loss", "faithfulness_loss", "stochastic_recon_loss", "stochastic_recon_layerwise_loss",
                "importance_minimality_loss", "ci_l0", "mmcs", "ml2r", "identity_error", "recovered"):  # fmt: skip
        assert isinstance(metrics[key], float | int), key
    assert metrics["recon_loss"] is None and metrics["out_recon_loss"] is None  # off: never computed
    assert len(metrics["mmcs_per_instance"]) == 12
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == "spd" and resolved["steps"] == 40 and resolved["C"] == 20
    saved = torch.load(out / "components.pt", weights_only=True)
    assert (
        saved["method"] == "spd"
        and saved["linear1"].shape == (12, 20, 5, 2)
        and saved["linear2"].shape == (12, 20, 2, 5)
    )
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures >= {"tms_weights_inst0.png", *(f"identity_pattern_{g}_inst0.png" for g in ("linear1", "linear2"))}
    assert figures >= {"ci_linear1_inst0.png", "ci_linear2_inst0.png"}  # every matrix's CI matrix
    # the saved state loads back into the same decomposition
    cfg = load_config(out / "config.yaml")
    target = load_target(cfg.target, "cpu").model
    comps = SPD().load(cfg, target, saved["state_dict"], torch.device("cpu"))
    assert torch.allclose(comps.layer_component_weights("linear1"), saved["linear1"])


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, tms_file: Path) -> None:
    cfg = load_config(
        "spd-tms-5-2", {"target.name": None, "target.path": str(tms_file), **SMALL, "eval.figures": False}
    )
    unbroken = run_decomposition(cfg, tmp_path / "a", progress=False)
    ckpt = tmp_path / "b" / "checkpoint.pt"
    calls: list[int] = []
    stop_at_20 = lambda: calls.append(1) or len(calls) == 2  # noqa: E731 (records at steps 0, 20)
    stopped = run_decomposition(cfg, tmp_path / "b", checkpoint_path=ckpt, should_stop=stop_at_20, progress=False)
    assert stopped.status == "stopped" and stopped.steps_done == 20 and ckpt.exists()
    resumed = run_decomposition(cfg, tmp_path / "b", checkpoint_path=ckpt, progress=False)
    assert resumed.status == "finished"
    for key in ("total_loss", "stochastic_recon_loss", "importance_minimality_loss", "mmcs", "ml2r"):
        assert resumed.metrics[key] == pytest.approx(unbroken.metrics[key], rel=1e-6), key
