"""Real driver processes: one driver per OUT, a private Ray on loopback with its own token, live
progress and `apd status` from outside, and a full disk at start."""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep

ROOT = Path(__file__).resolve().parents[2]


def apd(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apd.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=180, **kw
    )  # type: ignore[call-overload]


def start_apd(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "apd.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
def test_one_driver_per_out_on_a_private_loopback_ray(tiny_target: Path, tmp_path: Path) -> None:
    data = sweep_dict(tiny_target, name="drv", search={"algorithm": "random", "n_trials": 1, "seed": 0})
    data["fixed"]["steps"] = 1500  # seconds: long enough to be seen running
    spec, out = write_sweep(tmp_path / "drv.yaml", data), tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="apdray", dir="/tmp")  # short: it holds Unix sockets
    env = os.environ | {"RAY_ADDRESS": "", "APD_STATUS_EVERY": "1", "RAY_TMPDIR": ray_tmp}
    driver = subprocess.Popen(
        [sys.executable, "-m", "apd.cli", "sweep", str(spec), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(r["status"] == "RUNNING" and r["steps_done"] for r in trial_rows(out).values()):
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0]
            time.sleep(0.2)

        # every listening socket of the driver and the Ray processes it started is on loopback
        procs = [psutil.Process(driver.pid), *psutil.Process(driver.pid).children(recursive=True)]
        listening = []
        for p in procs:
            try:
                listening += [(p.name(), c.laddr) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                continue
        names = {name for name, _ in listening}
        assert {"gcs_server", "raylet"} <= names, listening
        assert all(loopback(addr.ip) for _, addr in listening), listening
        # ... and that Ray requires a token made for this sweep: 0600, not ~/.ray/auth_token
        [gcs] = [p for p in procs if p.name() == "gcs_server"]
        gcs_env = gcs.environ()
        assert gcs_env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in gcs_env
        token = Path(gcs_env["RAY_AUTH_TOKEN_PATH"])
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.parent != Path.home() / ".ray"
        assert len(token.read_text()) >= 32

        # a second driver, fresh or resuming, is refused at once, naming the first; `apd status`
        # from another process names it too (all three at once, while the first one runs)
        others = [
            start_apd("sweep", "--resume", "--out", str(out), env=env),
            start_apd("sweep", str(spec), "--out", str(out), env=env),
            start_apd("status", str(out)),
        ]
        (_, resume_err), (_, fresh_err), (status, _) = [p.communicate(timeout=120) for p in others]
        holder = rf"the sweep driver pid {driver.pid} on host {re.escape(socket.gethostname())} since \S+"
        for proc, err in zip(others[:2], (resume_err, fresh_err), strict=True):
            assert proc.returncode == 2 and re.fullmatch(rf"error: {out}: in use by {holder}\n", err), err
        assert re.search(rf"\ndriver: running, pid {driver.pid} on host .* \(holds OUT/.lock\)\n", status), status

        log = driver.communicate(timeout=400)[0]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert driver.returncode == 0, log
    rows = trial_rows(out)
    assert len(rows) == 2 and {r["status"] for r in rows.values()} == {"COMPLETE"}  # each trial once
    # the live view: where to look before the first trial ends, then status lines (no control codes)
    lines = log.splitlines()
    first_trial = next(i for i, line in enumerate(lines) if line.startswith("[1/2] trial"))
    assert any(line.startswith("Optuna: optuna-dashboard sqlite:///") for line in lines[:first_trial])
    live = [line for line in lines if re.match(r"\[\d\d:\d\d:\d\d\] \d/2 done", line)]
    assert any(re.search(r"t000\d step \d+/1500, .*ETA", line) for line in live), log
    assert "\x1b" not in log
    assert "driver: none" in apd("status", str(out)).stdout


def test_a_full_disk_at_start_is_one_line_and_leaves_out_as_it_was(tiny_target: Path, tmp_path: Path) -> None:
    spec = write_sweep(tmp_path / "s.yaml", sweep_dict(tiny_target, search={"algorithm": "random", "n_trials": 1}))
    out = tmp_path / "out"

    def small_files() -> None:  # files stop growing at 50 kB (EFBIG), as on a disk that is full
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    r = apd("sweep", str(spec), "--out", str(out), "--engine", "inline", preexec_fn=small_files)
    assert r.returncode == 2
    assert (
        r.stderr == f"error: {out}/optuna.db: cannot write (disk I/O error); make room or fix it, then run it again\n"
    )
    assert not out.exists()
