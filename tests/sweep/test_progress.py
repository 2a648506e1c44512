"""The live status line, `apd status` on a folder, and the lock's refusal (no sweep runs here)."""

from __future__ import annotations

import io
import os
import re
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from apd.sweep.lock import LockBusy, SweepLock, holder_if_locked
from apd.sweep.progress import Progress, duration, eta
from apd.sweep.results import ResultsStore, now
from apd.sweep.spec import validate_spec
from apd.sweep.status import render
from apd.sweep.trial import TrialOutcome, TrialPoint

SPEC = {
    "name": "st",
    "experiment": "tms-5-2",
    "fixed": {"steps": 100},
    "objective": {"metric": "mmcs", "mode": "max"},
    "search": {"algorithm": "random", "n_trials": 2},
    "seeds": [0, 1],
    "parameters": {"topk": {"type": "uniform", "low": 0.2, "high": 0.3}},
}


def test_durations_and_eta() -> None:
    assert [duration(s) for s in (4.4, 65, 3 * 3600 + 120)] == ["4 s", "1 min 05 s", "3 h 02 min"]
    assert eta(25, 100, 10.0) == 30.0 and eta(0, 100, 10.0) is None and eta(5, None, 1.0) is None


def test_status_line_in_a_log_is_plain_and_shows_each_running_trial() -> None:
    stream = io.StringIO()
    progress = Progress(4, stream=stream, every=0.05)
    progress.preset({"COMPLETE": 1})
    progress.started("t0001", 100)
    progress.step("t0001", 10)
    time.sleep(0.05)
    progress.step("t0001", 20)
    progress.started("t0002", None)
    line = progress.line()
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\] 1/4 done \(1 COMPLETE\), 2 running, 1 to run: "
        r"t0001 step 20/100, \d+ s, ETA \d+ s; t0002 step 0, \d+ s",
        line,
    ), line
    progress.start()
    time.sleep(0.3)
    progress.echo("[2/4] trial t0001 COMPLETE")
    progress.ended("t0001", "COMPLETE")
    progress.stop()
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert "[2/4] trial t0001 COMPLETE\n" in text and text.count(" done (1 COMPLETE), 2 running") >= 2


def test_status_reads_a_folder_and_the_lock(tmp_path: Path) -> None:
    sweep = validate_spec(SPEC, source="st.yaml")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep.resolved_dict()))
    store = ResultsStore(tmp_path, sweep, "ray")
    store.start(TrialPoint(0, "t0000", 0, 0, "s0", {"topk": 0.25}))
    store.end("t0000", TrialOutcome("COMPLETE", 100, {"mmcs": 0.97}, objective=[0.97]))
    store.start(TrialPoint(1, "t0001", 1, 0, "s0", {"topk": 0.25}))
    store.rows["t0001"]["start_time"] = now() - timedelta(seconds=10)
    store.add_step("t0001", {"step": 50, "total_loss": 1.0}, node="n" * 40)
    store.write()

    text, held = render(sweep, tmp_path)
    lines = text.splitlines()
    assert not held and lines[1] == "driver: none (no sweep driver holds OUT)"
    assert lines[2] == "trials: 1/4 done (1 COMPLETE), 1 running, 2 to run"
    assert re.fullmatch(r"  t0001 step 50/100, 1\d s, ETA \d+ s, node n{12}", lines[3]), lines[3]
    assert "interrupted; continue with apd sweep --resume" in lines[4]
    assert "best: mmcs=0.97 (t0000, setting s0)" in text

    with SweepLock(tmp_path):
        text, held = render(sweep, tmp_path)
        assert held and f"driver: running, pid {os.getpid()} on host {socket.gethostname()} since " in text
        holder = holder_if_locked(tmp_path)
        assert holder is not None and holder.pid == os.getpid()
        with pytest.raises(LockBusy, match=rf"{tmp_path}: in use by the sweep driver pid {os.getpid()} on host "):
            SweepLock(tmp_path).acquire()
    assert holder_if_locked(tmp_path) is None
    with SweepLock(tmp_path):  # free again (the previous holder's file does not block it)
        pass
