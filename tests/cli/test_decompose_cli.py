"""`apd decompose` end to end on a small trained TMS, and resume of an interrupted run."""

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from apd.cli import main
from apd.config import load_config
from apd.run import run_decomposition
from apd.targets.registry import get_spec
from apd.targets.train import save_target, train


@pytest.fixture(scope="module")
def tms_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TMS 5-2 (12 instances) trained with the recipe, shortened to 600 steps."""
    path = tmp_path_factory.mktemp("targets") / "tms-5-2-short.pt"
    spec = get_spec("tms-5-2")
    save_target(path, name="tms-5-2", seed=0, spec=spec, trained=train(spec, 0, steps=600, progress=False))
    return path


def small(tms_file: Path) -> list[str]:
    return [
        "--set",
        "target.name=null",
        "--set",
        f"target.path={tms_file}",
        "--set",
        "steps=60",
        "--set",
        "batch_size=256",
        "--set",
        "log_every=20",
        "--quiet",
    ]


def test_decompose_writes_the_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, tms_file: Path) -> None:
    out = tmp_path / "run"
    assert main(["decompose", "tms-5-2", "--out", str(out), *small(tms_file)]) == 0
    printed = capsys.readouterr().out
    assert "status=finished" in printed and "mmcs=" in printed and f"wrote {out}/" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps_done"] == 60
    for key in ("mmcs", "ml2r", "recovered", "total_loss", "identity_error"):
        assert isinstance(metrics[key], float | int), key
    assert len(metrics["mmcs_per_instance"]) == 12
    assert metrics["mmcs"] == pytest.approx(sum(metrics["mmcs_per_instance"]) / 12)
    assert 0.0 <= metrics["recovered"] <= 1.0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["steps"] == 60 and resolved["topk"] == 0.211 and resolved["attribution_type"] == "gradient_apd"
    assert (out / "components.pt").stat().st_size > 0
    assert {p.name for p in (out / "figures").iterdir()} >= {"tms_weights_inst0.png", "identity_pattern_inst0.png"}
    assert not (out / "checkpoint.pt").exists()  # removed once the run finished


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, tms_file: Path) -> None:
    overrides = {
        "target.name": None,
        "target.path": str(tms_file),
        "steps": 60,
        "batch_size": 256,
        "log_every": 20,
        "eval.figures": False,
    }
    cfg = load_config("tms-5-2", overrides)
    unbroken = run_decomposition(cfg, tmp_path / "a", progress=False)
    ckpt = tmp_path / "b" / "checkpoint.pt"
    calls: list[int] = []
    stop_at_40 = lambda: calls.append(1) or len(calls) == 3  # noqa: E731 (records at steps 0, 20, 40)
    stopped = run_decomposition(cfg, tmp_path / "b", checkpoint_path=ckpt, should_stop=stop_at_40, progress=False)
    assert stopped.status == "stopped" and stopped.steps_done == 40 and ckpt.exists()
    resumed = run_decomposition(cfg, tmp_path / "b", checkpoint_path=ckpt, progress=False)
    assert resumed.status == "finished"
    for key in ("total_loss", "faithfulness_loss", "topk_recon_loss", "schatten_loss", "mmcs", "ml2r"):
        assert resumed.metrics[key] == unbroken.metrics[key], key


def test_cli_refuses_an_unfinished_run_without_resume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tms_file: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["decompose", "tms-5-2", "--out", str(out), *small(tms_file)]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_run_files_follow_the_umask(tmp_path: Path, tms_file: Path) -> None:
    # tempfile's 0600 made run folders on shared storage unreadable to the rest of a team
    cfg = load_config(
        "tms-5-2",
        {"target.name": None, "target.path": str(tms_file), "steps": 40, "batch_size": 64, "log_every": 20},
    )
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"figures": False})})
    out = tmp_path / "run"
    previous = os.umask(0o002)
    try:
        calls: list[int] = []
        stop = lambda: calls.append(1) or len(calls) == 2  # noqa: E731 (records at steps 0, 20)
        run_decomposition(cfg, out, checkpoint_path=out / "checkpoint.pt", should_stop=stop, progress=False)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {name: 0o664 for name in ("checkpoint.pt", "config.yaml", "components.pt", "metrics.json")}


def test_the_bar_shows_a_current_loss_between_records(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tms_file: Path
) -> None:
    from tqdm.auto import tqdm

    import apd.decompose

    shown: list[str] = []

    class Recording(tqdm):  # type: ignore[misc]
        def set_postfix(self, ordered_dict: object = None, refresh: bool = True, **kwargs: object) -> None:
            shown.append(str(kwargs["loss"]))
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(apd.decompose, "tqdm", Recording)
    # 200 steps, records every 500: only steps 0 and 200 are records
    overrides = {"target.name": None, "target.path": str(tms_file), "steps": 200, "batch_size": 64, "log_every": 500}
    assert run_decomposition(load_config("tms-5-2", overrides), None, progress=True).status == "finished"
    # the two records, and between them a refresh every max(10, steps // 100) = 10 steps: 19 more values
    assert len(shown) == 2 + 19
    assert len(set(shown[1:-1]) - {shown[0]}) >= 10
