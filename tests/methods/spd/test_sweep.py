"""SPD through a real inline sweep and the report, and bad SPD settings in sweep files and configs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from apd.cli import main
from tests.analysis.conftest import pentagon_target


def _spec(target: Path, **fixed: Any) -> dict[str, Any]:
    return {
        "name": "tiny-spd",
        "experiment": "spd-tms-5-2",
        "fixed": {"target.name": None, "target.path": str(target), "steps": 20, "batch_size": 64, **fixed},
        "report_every": 10,
        "parameters": {"importance_minimality_coeff": {"type": "grid", "values": [3e-3, 1.2e-2]}},
        "seeds": [0],
        "search": {"algorithm": "grid"},
        "objective": {"metric": "recovered", "mode": "max"},
    }


@pytest.mark.slow
def test_an_spd_sweep_through_the_inline_engine_and_the_report(tmp_path: Path) -> None:
    target = pentagon_target(tmp_path / "pentagon.pt")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(_spec(target, C=6), sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "tiny.yaml"), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert trials["status"].tolist() == ["COMPLETE", "COMPLETE"]
    assert trials["method"].tolist() == ["spd", "spd"] and trials["family"].tolist() == ["tms", "tms"]
    assert sorted(trials["param.importance_minimality_coeff"]) == [3e-3, 1.2e-2]
    for key in ("metric.mmcs", "metric.check_one_to_one_per_instance", "metric.stochastic_recon_loss"):
        assert trials[key].notna().all(), key
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["analyze", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "TMS 5-2 (pentagon) with SPD" in buf.getvalue()
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny-spd | spd | pentagon |" in text and "importance_minimality_coeff" in text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"parameters": {"importance_minimality_coeff": {"type": "grid", "values": [-1]}}},
         "parameters.importance_minimality_coeff.values.0: must be >= 0 (got -1)"),
        ({"fixed": {"pnorm": 0}}, "fixed.pnorm: must be > 0 (got 0)"),
        ({"fixed": {"C": 0}}, "fixed.C: must be > 0 (got 0)"),
        ({"fixed": {"n_mask_samples": 0}}, "fixed.n_mask_samples: must be > 0 (got 0)"),
        ({"parameters": {"importance_minimality_coef": {"type": "grid", "values": [1e-3]}}},
         "parameters.importance_minimality_coef: unknown key; did you mean 'importance_minimality_coeff'?"),
    ],
)  # fmt: skip
def test_bad_spd_settings_in_a_sweep_file_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], expected: str
) -> None:
    spec = {k: v for k, v in _spec(tmp_path / "absent.pt").items() if k != "fixed"} | {"fixed": {"steps": 10}}
    spec["fixed"] |= change.get("fixed", {})
    if "parameters" in change:
        spec["parameters"] = change["parameters"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "bad.yaml"), "--engine", "inline", "--no-tracking", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'bad.yaml'}: {expected}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("importance_minimality_coeff=-1",
         "importance_minimality_coeff: Input should be greater than or equal to 0 (got -1)"),
        ("importance_minimality_coef=1",
         "importance_minimality_coef: unknown key; did you mean 'importance_minimality_coeff'?"),
        ("n_mask_sample=2", "n_mask_sample: unknown key; did you mean 'n_mask_samples'?"),
    ],
)  # fmt: skip
def test_bad_spd_settings_on_the_command_line_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    assert main(["decompose", "spd-tms-5-2", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith(expected) and len(err.splitlines()) == 1, err
