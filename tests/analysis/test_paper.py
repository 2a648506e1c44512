"""The papers' TMS table beside a sweep's best trial and best recovering setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from apd.analysis import compare_with_paper, load_trials
from apd.analysis.paper import tms_model


def test_tms_models_from_experiment_names() -> None:
    assert [tms_model(n) for n in ("tms-5-2", "tms-40-10-id", "tms-5-2-code", "resid-mlp-1", "x/tms-5-2.yaml")] == [
        "5-2",
        "40-10-id",
        "5-2",
        None,
        "5-2",
    ]


def test_rows_beside_the_paper(tms_sweep: Path) -> None:
    rows = compare_with_paper(load_trials(tms_sweep)).set_index("source")
    assert rows.loc["APD paper", ["mmcs", "ml2r"]].tolist() == ["0.998 ± 0.000", "0.893 ± 0.004"]
    assert rows.loc["SPD paper", "ml2r"] == "0.993 ± 0.002"
    # best trial t0011 (topk 0.2, schatten 1.0, seed 2): MMCS 0.998 + 2 * 0.0005, ML2R 0.9 - 2 * 0.01
    assert rows.loc["best trial t0011", ["mmcs", "ml2r"]].tolist() == ["0.999", "0.880"]
    # its setting's seeds 0, 1, 2: ML2R 0.90, 0.89, 0.88 -> median 0.89
    best = rows.loc["best recovering setting s-0.2-1.0"]
    assert (best["ml2r"], best["n"]) == ("0.890 [0.880, 0.900]", "3 seeds, recovered 3/3")


def test_non_tms_experiments_are_left_out(tms_sweep: Path) -> None:
    trials = load_trials(tms_sweep).assign(experiment="resid-mlp-1")
    assert compare_with_paper(trials).empty


def test_script(tms_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[2] / "analysis" / "compare_paper.py"
    spec = importlib.util.spec_from_file_location("compare_paper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tms_sweep), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| experiment | model | source | mmcs | ml2r | n |")
    assert "| tms-5-2 | 5-2 | APD paper | 0.998 ± 0.000 | 0.893 ± 0.004 |" in out
    assert module.main([str(tms_sweep / "missing")]) == 2
