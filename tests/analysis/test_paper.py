"""The papers' TMS table beside a sweep's best trial and best recovering setting, per method and target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from apd.analysis import compare_with_paper, load_trials


def test_rows_beside_the_paper(tms_sweep: Path) -> None:
    rows = compare_with_paper(load_trials(tms_sweep)).set_index("source")
    assert set(rows["target"]) == {"tms-5-2"} and set(rows["method"]) == {"apd"}
    assert rows.loc["APD paper", ["mmcs", "ml2r"]].tolist() == ["0.998 ± 0.000", "0.893 ± 0.004"]
    assert rows.loc["SPD paper", "ml2r"] == "0.993 ± 0.002"
    # best trial t0011 (topk 0.2, schatten 1.0, seed 2): MMCS 0.998 + 2 * 0.0005, ML2R 0.9 - 2 * 0.01
    assert rows.loc["best trial t0011", ["mmcs", "ml2r"]].tolist() == ["0.999", "0.880"]
    assert rows.loc["best trial t0011", "n"] == "seed 2, 1/1 instances recovered"
    # its setting's seeds 0, 1, 2: ML2R 0.90, 0.89, 0.88 -> median 0.89
    best = rows.loc["best recovering setting s-0.2-1.0"]
    assert (best["ml2r"], best["n"]) == ("0.890 [0.880, 0.900]", "3 seeds, recovered 3/3 instances")


def test_targets_the_papers_do_not_report_are_left_out(tms_sweep: Path) -> None:
    # by the target and family columns, not the experiment's name
    assert compare_with_paper(load_trials(tms_sweep).assign(target="tms-8-3")).empty
    assert compare_with_paper(load_trials(tms_sweep).assign(family="resid_mlp")).empty
    assert not compare_with_paper(load_trials(tms_sweep).assign(experiment="my-own.yaml")).empty


def test_script(tms_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[2] / "analysis" / "compare_paper.py"
    spec = importlib.util.spec_from_file_location("compare_paper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tms_sweep), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| target | method | source | mmcs | ml2r | n |")
    assert "| tms-5-2 | apd | APD paper | 0.998 ± 0.000 | 0.893 ± 0.004 |" in out
    assert module.main([str(tms_sweep / "missing")]) == 2
