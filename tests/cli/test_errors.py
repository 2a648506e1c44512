"""Bad input: a non-zero exit and one line naming the field or file, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from apd.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "topk_recon_coef=1"], "topk_recon_coef: unknown key"),
        (["--set", "C=many"], "C: Input should be a valid integer"),
        (["--set", "C=-3"], "C: Input should be greater than 0 (got -3)"),
        (["--set", "topk_recon_coeff=null"], "topk needs topk_recon_coeff"),
        (
            ["--set", "target.feature_probability=1.5"],
            "target.feature_probability: Input should be less than or equal to 1",
        ),
        (["--set", "lr_schedule=wavy"], "lr_schedule: Input should be 'constant', 'linear', 'cosine' or 'exponential'"),
        (["--set", "noequals"], "--set 'noequals': expected key=value"),
        (["--set", "C=[1, 2"], "--set 'C=[1, 2': value is not valid YAML"),
        (["--set", "topk=0.0001"], "topk * batch_size must be >= 1 (got 0.0001 * 2048)"),
        (["--set", "device=cpu", "--set", "autocast_dtype=bfloat16"], "autocast_dtype: bfloat16 is for CUDA devices"),
    ],
)
def test_bad_overrides(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str) -> None:
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(tmp_path / "run"), *args)
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "decompose", "tms-9-9")
    assert code == 2 and "unknown experiment 'tms-9-9'; known: " in err and "tms-5-2" in err


def test_missing_and_broken_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_cli(capsys, "decompose", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"error: {tmp_path / 'nope.yaml'}: no such file"
    broken = tmp_path / "broken.yaml"
    broken.write_text("C: 5\n  topk: [0.2\n")
    code, err = run_cli(capsys, "decompose", str(broken))
    assert code == 2 and err.startswith(f"error: {broken}: line ") and "not valid YAML" in err
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    code, err = run_cli(capsys, "decompose", str(listy))
    assert code == 2 and err == f"error: {listy}: expected a mapping of config keys"


def test_config_file_errors_name_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: {name: tms-5-2}\nC: 5\ntopk: 0.2\nlr: 0.01\nsteps: 10\nbatch_size: 64\n")
    code, err = run_cli(capsys, "decompose", str(bad))
    assert code == 2 and err == f"error: {bad}: topk needs topk_recon_coeff"


def test_existing_run_is_not_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(out))
    assert code == 2 and "already holds a finished run" in err
    assert (out / "metrics.json").read_text() == "{}"


def test_no_traceback_from_the_console_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "apd.cli", "decompose", "tms-5-2", "--set", "C=x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
