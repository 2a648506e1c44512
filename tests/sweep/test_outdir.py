"""OUT's rules: what a fresh sweep and a resume accept, lost or broken files rebuilt, failed writes
as one line, and the exit code of a sweep whose every trial failed (inline engine, in-process)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import apd.sweep.results as results
from apd import cli
from apd.errors import ConfigError
from apd.sweep.outdir import SWEEP_FILES, OutputError
from apd.sweep.results import read_table
from apd.sweep.runner import sweep_main
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep
from tests.sweep.test_engines import args

ONE_DRAW = {"search": {"algorithm": "random", "n_trials": 1, "seed": 0}}


def inline(spec: Path | None, out: Path, **kw: Any) -> int:
    return sweep_main(args(spec, out, engine="inline", **kw))


def history_of(out: Path) -> dict[str, list[tuple[int, float]]]:
    hist = read_table(out / "history.parquet").to_pylist()
    by: dict[str, list[tuple[int, float]]] = {}
    for r in hist:
        by.setdefault(r["trial_id"], []).append((r["step"], r["total_loss"]))
    return {k: sorted(v) for k, v in by.items()}


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_fresh_sweep_refuses_any_out_with_sweep_files(tiny_target: Path, tmp_path: Path, name: str) -> None:
    spec, out = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW)), tmp_path / "out"
    out.mkdir()
    if name in ("trials", "ray", "mlartifacts"):
        (out / name).mkdir()
        (out / name / "keep").write_text("x")
    else:
        (out / name).write_bytes(b"written before")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        ConfigError, match=rf"already holds a sweep \({name}\); pass --resume to continue it, or choose"
    ):
        inline(spec, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_lost_sweep_yaml_resumes_with_the_sweep_file(tiny_target: Path, tmp_path: Path) -> None:
    spec, out = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW)), tmp_path / "out"
    assert inline(spec, out, trials=1) == 0
    (out / "sweep.yaml").unlink()
    with pytest.raises(ConfigError, match=r"already holds a sweep \(optuna.db, trials.parquet"):
        inline(spec, out)
    with pytest.raises(ConfigError, match=r"no sweep.yaml \(deleted\?\); resume with the sweep file"):
        inline(None, out, resume=True)
    assert inline(spec, out, resume=True, trials=2) == 0
    assert len(trial_rows(out)) == 4 and (out / "sweep.yaml").is_file()


def test_lost_or_broken_parquet_is_rebuilt_from_run_folders(
    tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec, out = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW)), tmp_path / "out"
    assert inline(spec, out) == 0
    rows, hist = trial_rows(out), history_of(out)
    assert len(rows) == 2 and len(hist["t0000"]) == 4
    assert (out / "trials/t0000/history.jsonl").is_file()

    def same() -> None:
        now = trial_rows(out)
        for tid, row in rows.items():
            for col, value in row.items():
                if col.startswith(("metric.", "param.", "objective")) or col in ("status", "seed", "setting_id"):
                    assert now[tid][col] == value, (tid, col)
        assert history_of(out) == hist

    # deleted: rebuilt with every metric and the history
    (out / "trials.parquet").unlink()
    (out / "history.parquet").unlink()
    capsys.readouterr()
    assert inline(None, out, resume=True) == 0
    assert (
        "rebuilt 2 trial rows (metrics of 2 from their run folders) and the step history of 2"
        in capsys.readouterr().out
    )
    same()
    # garbage and truncated: moved aside (kept), rebuilt
    (out / "trials.parquet").write_bytes(b"not parquet at all")
    data = (out / "history.parquet").read_bytes()
    (out / "history.parquet").write_bytes(data[: len(data) // 2])
    assert inline(None, out, resume=True) == 0
    text = capsys.readouterr().out
    assert "trials.parquet: unreadable (" in text and "moved to trials.parquet.corrupt-" in text
    assert "history.parquet: unreadable (" in text
    [aside] = out.glob("trials.parquet.corrupt-*")
    assert aside.read_bytes() == b"not parquet at all"
    assert [p.read_bytes() for p in out.glob("history.parquet.corrupt-*")] == [data[: len(data) // 2]]
    same()


def test_garbage_optuna_db_is_one_line(tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec, out = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW)), tmp_path / "out"
    assert inline(spec, out, trials=1) == 0
    (out / "optuna.db").write_bytes(b"garbage" * 1000)
    capsys.readouterr()
    assert cli.main(["sweep", "--resume", "--out", str(out), "--engine", "inline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}/optuna.db: not a readable Optuna study ("), err


class FullDisk:
    """`write_atomic` that fails like a full disk while `full(table, path)` says so."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = results.write_atomic
        self.full: Callable[[pa.Table, Path], bool] = lambda table, path: False
        monkeypatch.setattr(results, "write_atomic", self)

    def __call__(self, table: pa.Table, path: Path) -> None:
        if self.full(table, path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.real(table, path)


def test_failed_writes_stop_the_sweep_in_one_line_and_resumes_clear_every_running_row(
    tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = sweep_dict(tiny_target, search={"algorithm": "random", "n_trials": 2, "seed": 0})
    spec, out = write_sweep(tmp_path / "s.yaml", data), tmp_path / "out"
    disk = FullDisk(monkeypatch)
    # the disk fills up just as t0001 ends: its row was last written RUNNING
    disk.full = lambda table, path: (
        {"trial_id": "t0001", "status": "COMPLETE"} in table.select(["trial_id", "status"]).to_pylist()
        if "status" in table.column_names
        else False
    )
    assert cli.main(["sweep", str(spec), "--out", str(out), "--engine", "inline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {out}/trials.parquet: cannot write (No space left on device); make room or fix it, "
        "then continue with --resume"
    ]
    assert {t: r["status"] for t, r in trial_rows(out).items()} == {"t0000": "COMPLETE", "t0001": "RUNNING"}
    assert not list(out.glob(".*.tmp"))  # no temp file left behind
    # a resume whose own write fails: the study marks t0001 interrupted, the file keeps its RUNNING row
    disk.full = lambda table, path: True
    assert cli.main(["sweep", "--resume", "--out", str(out), "--engine", "inline"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {out}/trials.parquet: cannot write")
    assert trial_rows(out)["t0001"]["status"] == "RUNNING"
    # the next resume clears it, and reruns its point under a new id
    disk.full = lambda table, path: False
    assert cli.main(["sweep", "--resume", "--out", str(out), "--engine", "inline"]) == 0
    rows = trial_rows(out)
    assert "t0001" not in rows and len(rows) == 4 and {r["status"] for r in rows.values()} == {"COMPLETE"}


def test_a_sweep_whose_every_trial_failed_exits_1(
    tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = sweep_dict(tiny_target, **ONE_DRAW)
    data["fixed"]["device"] = "bogus"
    spec = write_sweep(tmp_path / "s.yaml", data)
    assert inline(spec, tmp_path / "out") == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        "sweep failed: no trial completed (2 FAILED); first error: t0000: ConfigError: device: not a torch device "
        "(got 'bogus')"
    )


def test_out_that_is_a_file_or_unwritable(tiny_target: Path, tmp_path: Path) -> None:
    spec = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, **ONE_DRAW))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file: not a folder"):
        inline(spec, tmp_path / "file")
    with pytest.raises(ConfigError, match=r"file/out: cannot create a folder in .*file \(--out\)"):
        inline(spec, tmp_path / "file" / "out")


def test_ray_engine_stops_when_out_cannot_be_written(
    ray_local: None, tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sweep_dict(tiny_target, search={"algorithm": "random", "n_trials": 2, "seed": 0}, max_concurrent=1)
    spec, out = write_sweep(tmp_path / "s.yaml", data), tmp_path / "out"
    disk = FullDisk(monkeypatch)
    disk.full = lambda table, path: "status" in table.column_names and "COMPLETE" in table.column("status").to_pylist()
    start = time.monotonic()
    with pytest.raises(OutputError, match=r"trials.parquet: cannot write \(No space left on device\); make room"):
        sweep_main(args(spec, out))
    assert time.monotonic() - start < 120  # the experiment ended: no trial ran on with nothing saved
    assert {t: r["status"] for t, r in trial_rows(out).items()} == {"t0000": "RUNNING"}
    # room again: the resume reruns t0000 (stopped before it was recorded) and runs the rest
    disk.full = lambda table, path: False
    assert sweep_main(args(None, out, resume=True)) == 0
    rows = trial_rows(out)
    assert "t0000" not in rows and len(rows) == 4 and {r["status"] for r in rows.values()} == {"COMPLETE"}
