"""The Parquet schema (types, metadata, round trip) and the atomic rewrite under SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from apd.sweep.results import HISTORY_FILE, SCHEMA_VERSION, TRIALS_FILE, ResultsStore, read_table
from apd.sweep.spec import validate_spec
from apd.sweep.trial import TrialOutcome, TrialPoint

SPEC = {
    "experiment": "tms-5-2",
    "fixed": {"steps": 200, "batch_size": 256},
    "objective": [{"metric": "mmcs", "mode": "max"}, {"metric": "ml2r", "mode": "max"}],
    "search": {"algorithm": "nsga2", "n_trials": 2},
    "parameters": {
        "topk": {"type": "uniform", "low": 0.2, "high": 0.3},
        "C": {"type": "int", "low": 5, "high": 7},
        "m": {"type": "categorical", "values": [None, 1, 2]},
        "pnorm_choice": {"type": "categorical", "values": ["a", 1]},
        "target.feature_probability": {"type": "grid", "values": [0.05, 0.1]},
    },
}


def make_store(tmp_path: Path) -> ResultsStore:
    spec = {**SPEC, "parameters": {k: v for k, v in SPEC["parameters"].items() if k != "pnorm_choice"}}
    spec["parameters"]["attribution_type"] = {"type": "categorical", "values": ["gradient", "gradient_apd"]}
    spec["parameters"]["unit_norm_matrices"] = {"type": "categorical", "values": [False, True]}
    sweep = validate_spec(spec, source="t.yaml")
    return ResultsStore(tmp_path, sweep, "inline")


def point(n: int, **params: object) -> TrialPoint:
    return TrialPoint(n, f"t{n:04d}", seed=n % 2, draw=n - n % 2, setting_id=f"s{n // 2}", params=dict(params))


def fill(store: ResultsStore) -> None:
    p = {
        "topk": 0.25,
        "C": 6,
        "m": None,
        "target.feature_probability": 0.05,
        "attribution_type": "gradient",
        "unit_norm_matrices": True,
    }
    store.start(point(0, **p))
    store.add_step("t0000", {"step": 0, "total_loss": 1.0, "lr": 0.0})
    store.add_step("t0000", {"step": 20, "total_loss": 0.5, "lr": 0.01})
    metrics = {
        "status": "finished",
        "steps_done": 40,
        "error": None,
        "mmcs": 0.99,
        "ml2r": 0.9,
        "identity_error": 0,
        "recovered": 1.0,
        "recovered_all": True,
        "mmcs_per_instance": [0.99, 0.98],
        "recovered_per_instance": [True, False],
        "act_recon_loss": None,
    }
    store.end("t0000", TrialOutcome("COMPLETE", 40, metrics, None, [0.99, 0.9], "node-a"))
    store.start(point(1, **(p | {"m": 2, "unit_norm_matrices": False})))
    store.add_step("t0001", {"step": 20, "total_loss": 0.7, "lr": 0.01})
    store.end("t0001", TrialOutcome("PRUNED"))
    store.start(point(2, **(p | {"C": 5})))
    store.end("t0002", TrialOutcome("FAILED", error="ValueError: boom", node="node-b"))
    store.start(point(3, **(p | {"C": 7})))  # still running


def test_trials_schema_types_and_metadata(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    fill(store)
    store.write()
    table = pq.read_table(tmp_path / TRIALS_FILE)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["apd_schema_version"] == SCHEMA_VERSION
    assert meta["apd_engine"] == "inline" and meta["apd_sweep"] == "t"
    assert meta["apd_objectives"] == '[{"metric": "mmcs", "mode": "max"}, {"metric": "ml2r", "mode": "max"}]'
    types = {f.name: f.type for f in table.schema}
    expected = {
        "trial_id": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "seed": pa.int64(),
        "setting_id": pa.string(),
        "draw": pa.int64(),
        "recovered": pa.float64(),
        "recovered_all": pa.bool_(),
        "start_time": pa.timestamp("us", tz="UTC"),
        "end_time": pa.timestamp("us", tz="UTC"),
        "steps_done": pa.int64(),
        "objective.0": pa.float64(),
        "objective.1": pa.float64(),
        "param.topk": pa.float64(),
        "param.C": pa.int64(),
        "param.m": pa.int64(),
        "param.target.feature_probability": pa.float64(),
        "param.attribution_type": pa.string(),
        "param.unit_norm_matrices": pa.bool_(),
        "metric.mmcs": pa.float64(),
        "metric.identity_error": pa.int64(),
        "metric.recovered_all": pa.bool_(),
        "metric.mmcs_per_instance": pa.list_(pa.float64()),
        "metric.recovered_per_instance": pa.list_(pa.float64()),
        "metric.act_recon_loss": pa.float64(),
    }
    for name, typ in expected.items():
        assert types[name] == typ, name
    assert "metric.status" not in types and "metric.steps_done" not in types and "objective" not in types
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert [rows[t]["status"] for t in sorted(rows)] == ["COMPLETE", "PRUNED", "FAILED", "RUNNING"]
    assert rows["t0000"]["objective.0"] == 0.99 and rows["t0000"]["recovered_all"] is True
    assert rows["t0000"]["metric.recovered_per_instance"] == [1.0, 0.0]
    assert rows["t0000"]["param.m"] is None and rows["t0001"]["param.m"] == 2
    assert rows["t0001"]["steps_done"] == 20 and rows["t0001"]["metric.mmcs"] is None
    assert rows["t0002"]["error"] == "ValueError: boom" and rows["t0002"]["node"] == "node-b"
    assert rows["t0003"]["end_time"] is None and rows["t0000"]["end_time"] >= rows["t0000"]["start_time"]


def test_history_and_reload_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    fill(store)
    store.write()
    hist = pq.read_table(tmp_path / HISTORY_FILE)
    assert hist.schema.field("step").type == pa.int64()
    assert hist.to_pydict() == {
        "trial_id": ["t0000", "t0000", "t0001"],
        "step": [0, 20, 20],
        "lr": [0.0, 0.01, 0.01],
        "total_loss": [1.0, 0.5, 0.7],
    }
    again = ResultsStore.load(tmp_path, store.sweep, "inline")
    assert again.rows["t0001"]["params"] == store.rows["t0001"]["params"]
    assert again.rows["t0000"]["objective"] == [0.99, 0.9]
    assert again.history["t0000"][20] == {"total_loss": 0.5, "lr": 0.01}
    again.write()
    assert pq.read_table(tmp_path / TRIALS_FILE).equals(pq.read_table(tmp_path / TRIALS_FILE))
    assert pq.read_table(tmp_path / TRIALS_FILE).to_pylist() == pq.read_table(tmp_path / TRIALS_FILE).to_pylist()


def test_mixed_choices_are_stored_as_json(tmp_path: Path) -> None:
    spec = {**SPEC, "parameters": {"C": {"type": "categorical", "values": [5, "6"]}}}  # pydantic reads "6" as 6
    store = ResultsStore(tmp_path, validate_spec(spec, source="t.yaml"), "ray")
    store.start(point(0, C=5))
    store.start(point(1, C="6"))
    store.write()
    table = pq.read_table(tmp_path / TRIALS_FILE)
    assert table.schema.field("param.C").type == pa.string()
    assert table.column("param.C").to_pylist() == ["5", '"6"']
    again = ResultsStore.load(tmp_path, store.sweep, "ray")
    assert [again.rows[t]["params"]["C"] for t in ("t0000", "t0001")] == [5, "6"]


WRITER = """
import sys, time
from pathlib import Path
import pyarrow as pa
from apd.sweep.results import write_atomic
path, n = Path(sys.argv[1]), 0
while True:
    n += 1
    write_atomic(pa.table({"i": pa.array([n] * 200_000), "x": pa.array([float(n)] * 200_000)}), path)
    print(n, flush=True)
"""


def test_rewrite_is_atomic_under_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    for delay in (0.8, 1.1, 1.4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one complete file exists
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        table = pq.read_table(path)  # always a whole file, never a torn one
        assert table.num_rows == 200_000
        assert len(set(table.column("i").to_pylist())) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "trials.parquet"]
    assert all(n.startswith(".trials.parquet.") for n in leftovers)  # only a killed writer's temp file


def test_read_table_is_never_torn_by_a_concurrent_rewrite(tmp_path: Path) -> None:
    """A reader polling a running sweep's file: pyarrow given a path opens it twice (footer, then
    pages), so a rewrite in between tore reads; `read_table` reads through one handle."""
    path = tmp_path / "trials.parquet"
    varying = WRITER.replace("200_000", "(20_000 + 1_000 * (n % 7))")  # the size changes every rewrite
    proc = subprocess.Popen([sys.executable, "-c", varying, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        for _ in range(300):
            table = read_table(path)
            assert len(set(table.column("i").to_pylist())) == 1
            assert table.num_rows == 20_000 + 1_000 * (table.column("i")[0].as_py() % 7)
    finally:
        proc.kill()
        proc.wait()
