"""Bad input: a non-zero exit and one line naming the field or file, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from apd.cli import main
from apd.config import experiment_path, load_config

EXP = experiment_path("tms-5-2")
"""The shipped TMS 5-2 config: `--set` errors name it as `EXP with overrides`."""
TARGETS = "tms-5-2, tms-40-10, tms-5-2-id, tms-40-10-id, resid-mlp-1, resid-mlp-2, resid-mlp-3, gated-4"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
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
    code, err = run_cli(capsys, "decompose", "nope")
    assert code == 2 and err.startswith("error: unknown experiment 'nope'; known: gated-4, ") and "tms-5-2" in err


def assert_one_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err == f"error: {expected}", err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # top-k must select among what exists (topk.py would clamp it silently)
        (
            ["--set", "topk=10", "--set", "C=5"],
            "topk: must be <= C (5): batch top-k keeps int(topk * batch_size) of batch_size * C attributions (got 10)",
        ),
        (
            ["--set", "topk=7", "--set", "C=5", "--set", "batch_topk=false"],
            "topk: must be <= C (5): per-sample top-k keeps int(topk) of C components (got 7)",
        ),
        (
            ["--set", "topk=5", "--set", "C=5", "--set", "distil_from_target=true"],
            "topk: must be <= C - 1 (4): "
            "batch top-k keeps int(topk * batch_size) of batch_size * C - 1 attributions (got 5)",
        ),
        # every float finite, no booleans for numbers, sizes within int64
        (["--set", "lr=.inf"], "lr: Input should be a finite number (got inf)"),
        (["--set", "lr=.nan"], "lr: Input should be a finite number (got nan)"),
        (["--set", "eval.ml2r_max=.inf"], "eval.ml2r_max: Input should be a finite number (got inf)"),
        (
            ["--set", "target.feature_probability=.nan"],
            "target.feature_probability: Input should be a finite number (got nan)",
        ),
        (["--set", "C=true"], "C: must be a number, not a boolean (got True)"),
        (["--set", "lr=yes"], "lr: must be a number, not a boolean (got True)"),
        (
            ["--set", "C=1000000000000000000000"],
            "C: Input should be less than or equal to 9223372036854775807 (got 1000000000000000000000)",
        ),
        (["--set", "batch_size=0"], "batch_size: Input should be greater than 0 (got 0)"),
        (["--set", "eval.scrub_batches=-1"], "eval.scrub_batches: Input should be greater than 0 (got -1)"),
        # sections
        (["--set", "target=3"], "target: expected a mapping of keys (got 3)"),
        (["--set", "eval="], "eval: expected a mapping of keys (got None)"),
        (["--set", "target.name.x=1"], "target.name.x: name is not a section"),
        # typos: the closest known key or name
        (["--set", "schatten_coef=1"], "schatten_coef: unknown key; did you mean 'schatten_coeff'?"),
        (["--set", "eval.mmcs=0.5"], "eval.mmcs: unknown key; did you mean 'eval.mmcs_min'?"),
        (
            ["--set", "target.feature_prob=0.1"],
            "target.feature_prob: unknown key; did you mean 'target.feature_probability'?",
        ),
        (
            ["--set", "attribution_type=gradiant"],
            "attribution_type: Input should be 'gradient', 'gradient_apd', "
            "'activation' or 'ablation' (got 'gradiant'); did you mean 'gradient'?",
        ),
        (
            ["--set", "target.name=tms-5-3"],
            f"target.name: unknown target 'tms-5-3'; did you mean 'tms-5-2'? known: {TARGETS}",
        ),
        (["--set", "method=apdd"], "method: unknown method 'apdd'; did you mean 'apd'? known: apd, spd"),
    ],
)
def test_bad_settings_exact_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(tmp_path / "run"), *args)
    assert_one_line(code, err, f"{EXP} with overrides: {expected}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "a..b=1"], "--set 'a..b=1': 'a..b' has an empty part (expected e.g. target.seed=1)"),
        (["--set", "C={a: 1, a: 2}"], "--set 'C={a: 1, a: 2}': value is not valid YAML"),
        (["--set", "C=!!python/name:os.system"], "--set 'C=!!python/name:os.system': value is not valid YAML"),
        (
            ["--checkpoint-every", "-5"],
            "apd decompose: argument --checkpoint-every: must be >= 1 (got -5) (see apd decompose --help)",
        ),
        (
            ["--checkpoint-every", "0"],
            "apd decompose: argument --checkpoint-every: must be >= 1 (got 0) (see apd decompose --help)",
        ),
        (
            ["--checkpoint-every", "x"],
            "apd decompose: argument --checkpoint-every: must be an integer (got 'x') (see apd decompose --help)",
        ),
        (["--checkpoint-every", "150"], "--checkpoint-every: must be a multiple of log_every (500) (got 150)"),
        (["--bogus"], "apd: unrecognized arguments: --bogus (see apd --help)"),
    ],
)
def test_bad_flags_exact_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(tmp_path / "run"), *args)
    assert_one_line(code, err, expected)
    assert not (tmp_path / "run").exists()


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(*run_cli(capsys), "apd: the following arguments are required: command (see apd --help)")
    assert_one_line(
        *run_cli(capsys, "decompose"),
        "apd decompose: the following arguments are required: experiment (see apd decompose --help)",
    )
    assert_one_line(
        *run_cli(capsys, "sweep", "x.yaml", "--trials", "x"),
        "apd sweep: argument --trials: invalid int value: 'x' (see apd sweep --help)",
    )


def test_unknown_names_suggest_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "decompose", "tms-5-3")
    assert code == 2 and err.startswith("error: unknown experiment 'tms-5-3'; did you mean 'tms-5-2'? known: gated-4")
    assert_one_line(
        *run_cli(capsys, "train-target", "tms-5-3"),
        f"train-target: unknown target 'tms-5-3'; did you mean 'tms-5-2'? known: {TARGETS}",
    )


def _config_file(tmp_path: Path, name: str = "mine.yaml", **changes: object) -> Path:
    data = yaml.safe_load(EXP.read_text()) | changes
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_unreadable_config_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(128, 256)) * 3)
    assert_one_line(
        *run_cli(capsys, "decompose", str(garbage)), f"{garbage}: not a YAML text file (invalid UTF-8 at byte 0)"
    )
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert_one_line(*run_cli(capsys, "decompose", str(folder)), f"{folder}: is a directory, not a YAML file")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_one_line(*run_cli(capsys, "decompose", str(empty)), f"{empty}: expected a mapping of config keys")
    nul = tmp_path / "nul.yaml"
    nul.write_text("C: 5\x00\n")
    assert_one_line(
        *run_cli(capsys, "decompose", str(nul)),
        f"{nul}: not valid YAML (unacceptable character #x0000: special characters are not allowed)",
    )
    locked = _config_file(tmp_path, "locked.yaml")
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # tests may run as root, where chmod 000 does not stop a read
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert_one_line(*run_cli(capsys, "decompose", str(locked)), f"{locked}: cannot read (Permission denied)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_permission_denied_for_real(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    locked = _config_file(tmp_path, "locked.yaml")
    locked.chmod(0)
    assert_one_line(*run_cli(capsys, "decompose", str(locked)), f"{locked}: cannot read (Permission denied)")


def test_duplicate_keys_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(EXP.read_text() + "C: 7\n")
    first = next(i for i, line in enumerate(EXP.read_text().splitlines(), 1) if line.startswith("C:"))
    last = len(EXP.read_text().splitlines()) + 1
    assert_one_line(
        *run_cli(capsys, "decompose", str(path)), f"{path}: line {last}: duplicate key 'C' (first on line {first})"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("target: {name: tms-5-2, name: tms-40-10}\n")
    assert_one_line(
        *run_cli(capsys, "decompose", str(nested)), f"{nested}: line 1: duplicate key 'name' (first on line 1)"
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    from apd.config import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {mmcs_min: 0.9, ml2r_min: 0.5}\neval: {<<: *b, mmcs_min: 0.95}\n")
    assert read_yaml(path)["eval"] == {"mmcs_min": 0.95, "ml2r_min": 0.5}  # an override, not a duplicate


def test_out_must_be_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert_one_line(*run_cli(capsys, "decompose", "tms-5-2", "--out", str(afile)), f"{afile}: not a folder (--out)")
    inside = afile / "run"
    assert_one_line(
        *run_cli(capsys, "decompose", "tms-5-2", "--out", str(inside)),
        f"{inside}: cannot create a folder in {afile} (--out)",
    )


def _planted_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 0, "components": {}, "optimizer": {}, "config": {}, "x": Payload()}, path)


def test_resume_refuses_a_planted_pickle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "ran"
    _planted_checkpoint(out / "checkpoint.pt", marker)
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(out), "--resume", "--quiet")
    assert_one_line(
        code,
        err,
        f"{out / 'checkpoint.pt'}: refused: holds pickled objects other than tensors, dicts, lists, numbers and "
        "strings (loading them could run code)",
    )
    assert not marker.exists()


def test_resume_refuses_broken_and_foreign_checkpoints(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(b"")
    args = ("decompose", "tms-5-2", "--out", str(out), "--resume", "--quiet")
    assert_one_line(*run_cli(capsys, *args), f"{ckpt}: not a readable checkpoint (EOFError)")
    torch.save([1, 2], ckpt)
    assert_one_line(
        *run_cli(capsys, *args), f"{ckpt}: not a checkpoint of apd decompose (no step, components, optimizer, config)"
    )
    other = load_config("tms-5-2", {"C": 7}).to_dict()
    torch.save({"step": 10, "components": {}, "optimizer": {}, "config": other}, ckpt)
    assert_one_line(
        *run_cli(capsys, *args),
        f"{ckpt}: written with C=7, now 5; resume with the same config or choose another --out",
    )


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


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("meta", "device: meta holds no data; use auto, cpu or cuda"),
        ("xla", "device: xla is not supported by this torch build or machine"),
        ("cuda:x", "device: not a torch device (got 'cuda:x')"),
    ],
)
def test_bad_devices(capsys: pytest.CaptureFixture[str], tmp_path: Path, device: str, expected: str) -> None:
    code, err = run_cli(capsys, "decompose", "tms-5-2", "--out", str(tmp_path / "run"), "--set", f"device={device}")
    assert_one_line(code, err, expected)
    assert not (tmp_path / "run").exists()


def test_a_sweep_file_given_to_decompose_and_the_reverse(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = Path(__file__).parents[2] / "sweeps" / "quickstart.yaml"
    assert_one_line(
        *run_cli(capsys, "decompose", str(sweep)),
        f"{sweep}: a sweep file (it has experiment: and objective:); run it with apd sweep",
    )
    assert_one_line(
        *run_cli(capsys, "sweep", str(EXP)),
        f"{EXP}: a decomposition config, not a sweep file (it has target:, no experiment:); run it with apd "
        "decompose, or name it in a sweep file's experiment:",
    )
