"""A real 2-node Ray cluster: trials run on both nodes, and killing the worker node loses no trial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apd.sweep.results import read_table
from tests.sweep.conftest import sweep_dict, trial_rows, write_sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    # a private RAY_TMPDIR: the cluster's sessions and its `ray_current_cluster` file stay out of
    # /tmp/ray, where a bare `ray.init()` elsewhere would find and join it
    tmp = tempfile.mkdtemp(prefix="apdray", dir="/tmp")
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "RAY_TMPDIR": tmp}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ray_cluster.py"))],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    info = json.loads(proc.stdout.readline())
    yield proc, info
    if proc.poll() is None:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_two_node_sweep_survives_losing_the_worker(
    cluster: tuple[subprocess.Popen[str], dict[str, str]], tiny_target: Path, tmp_path: Path
) -> None:
    proc, info = cluster
    data = sweep_dict(tiny_target, name="cluster", search={"algorithm": "random", "n_trials": 4, "seed": 0})
    # trials long enough (seconds, on any machine) that one is caught mid-run on the worker: at 300
    # steps the fast step finished each in ~2 s and CI's poll never saw one running there
    steps, every = 1500, 100
    data["fixed"]["steps"], data["report_every"] = steps, every
    data["max_failures"] = 2
    spec, out = write_sweep(tmp_path / "cluster.yaml", data), tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "apd.sweep", str(spec), "--out", str(out), "--address", info["address"]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
    )
    # wait until a trial on the worker node has saved a checkpoint, then kill the node under it
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[0]
        running = [t for t, r in trial_rows(out).items() if r["status"] == "RUNNING" and r["node"] == info["worker"]]
        victim = next((t for t in running if any((out / "ray/attempt-1" / t).glob("checkpoint_*"))), None)
        time.sleep(0.02)
    assert victim is not None, "no trial ever ran on the worker node"
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("kill-worker\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "killed"

    log = driver.communicate(timeout=400)[0]
    assert driver.returncode == 0, log
    final = trial_rows(out)
    assert len(final) == 8 and {r["status"] for r in final.values()} == {"COMPLETE"}, log
    assert info["head"] in {r["node"] for r in final.values()}
    # the trial that lost its node was retried on the head and finished all its steps
    assert final[victim]["node"] == info["head"] and final[victim]["steps_done"] == steps
    hist = read_table(out / "history.parquet").to_pandas()
    assert hist[hist.trial_id == victim].step.tolist() == list(range(0, steps + 1, every))
    # Tune's own log of the victim: the retry on the head resumed from the worker's checkpoint (it
    # never reported step 0 again, and left no gap)
    lines = (out / "ray/attempt-1" / victim / "result.json").read_text().splitlines()
    reports = [r for r in map(json.loads, lines) if r.get("apd.kind") == "step"]
    on_worker = [r["apd.step"] for r in reports if r["apd.node"] == info["worker"]]
    on_head = [r["apd.step"] for r in reports if r["apd.node"] == info["head"]]
    # both nodes ran it, and the retry neither restarted at step 0 nor skipped steps
    assert on_worker and on_head and 0 < min(on_head) <= max(on_worker) + every, (on_worker, on_head)
