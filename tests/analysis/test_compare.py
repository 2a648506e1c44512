"""APD and SPD side by side on one target: hand-made sweeps of both methods with known counts.

APD (experiment tms-5-2, centre top-k 0.211) and SPD (spd-tms-5-2, centre beta3 3e-3), each swept
over its centre x 1/4, 1/2, 1, 2, 4 with seeds 0-2 (one judged instance per trial):

| ratio | APD            | SPD                      |
|-------|----------------|--------------------------|
| 1/4   | 0/3 (low MMCS) | 2/3 (seed 2: low ML2R)   |
| 1/2   | 3/3            | 3/3                      |
| 1     | 3/3            | 3/3                      |
| 2     | 0/3            | 3/3                      |
| 4     | 0/3            | 0/3                      |

APD: 2/5 settings, 6/15 instances, band x1/2-x1; SPD: 3/5 settings, 11/15 instances, band x1/2-x2
(x1/4 has 2/3 = 67 % < 90 %).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from apd.analysis import analyze, write_report
from apd.analysis._compare import ratio_text
from apd.cli import main
from apd.sweep.results import TRIALS_FILE, trials_table, write_atomic
from apd.sweep.spec import validate_spec

from .conftest import _metrics

RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0)
SEEDS = (0, 1, 2)


def _write(out: Path, experiment: str, param: str, centre: float, recovered: dict[float, tuple[int, ...]]) -> Path:
    spec = {
        "name": out.name,
        "experiment": experiment,
        "fixed": {"steps": 100},
        "parameters": {param: {"type": "grid", "values": [centre * r for r in RATIOS]}},
        "seeds": list(SEEDS),
        "search": {"algorithm": "grid"},
        "objective": {"metric": "recovered", "mode": "max"},
    }
    validated = validate_spec(spec, source="fixture.yaml")
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    for n, (ratio, seed) in enumerate((r, s) for r in RATIOS for s in SEEDS):
        ok = seed in recovered.get(ratio, ())
        metrics = _metrics("recovered" if ok else "low MMCS", seed)
        rows.append(
            {
                "trial_id": f"t{n:04d}",
                "sweep": out.name,
                "experiment": experiment,
                "engine": "inline",
                "status": "COMPLETE",
                "error": None,
                "seed": seed,
                "setting_id": f"s-{ratio}",
                "draw": n // 3,
                "recovered": float(ok),
                "recovered_all": ok,
                "start_time": t0 + timedelta(minutes=n),
                "end_time": t0 + timedelta(minutes=n, seconds=30),
                "steps_done": 100,
                "params": {param: centre * ratio},
                "metrics": metrics,
                "objective": [float(ok)],
            }
        )
    out.mkdir(parents=True)
    write_atomic(trials_table(validated, "inline", rows), out / TRIALS_FILE)
    (out / "sweep.yaml").write_text(yaml.safe_dump(validated.resolved_dict(), sort_keys=False))
    return out


def _sweeps(tmp_path: Path) -> tuple[Path, Path]:
    apd = _write(tmp_path / "compare-apd", "tms-5-2", "topk", 0.211, {0.5: SEEDS, 1.0: SEEDS})
    spd = _write(
        tmp_path / "compare-spd",
        "spd-tms-5-2",
        "importance_minimality_coeff",
        3e-3,
        {0.25: (0, 1), 0.5: SEEDS, 1.0: SEEDS, 2.0: SEEDS},
    )
    return apd, spd


def test_ratio_text() -> None:
    assert [ratio_text(r) for r in (0.25, 0.5, 1.0, 2.0, 4.0, 1.5)] == ["1/4", "1/2", "1", "2", "4", "1.5"]


def test_methods_side_by_side(tmp_path: Path) -> None:
    apd, spd = _sweeps(tmp_path)
    a = analyze([apd, spd])
    assert [e.method for e in a.experiments] == ["apd", "spd"]
    (c,) = a.comparisons
    assert c.target == "tms-5-2"
    by = {s.method: s for s in c.sides}
    assert (by["apd"].param, by["apd"].centre) == ("topk", 0.211)
    assert (by["spd"].param, by["spd"].centre) == ("importance_minimality_coeff", 3e-3)
    assert (by["apd"].settings_recovering, by["apd"].settings_judged) == (2, 5)
    assert (by["spd"].settings_recovering, by["spd"].settings_judged) == (3, 5)
    assert by["apd"].evidence == "6/15 instances over 15 seeds"
    assert by["spd"].evidence == "11/15 instances over 15 seeds"
    assert by["apd"].band == (0.5, 1.0) and by["spd"].band == (0.5, 2.0)
    assert by["spd"].curve["recovery"].tolist() == ["2/3", "3/3", "3/3", "3/3", "0/3"]
    assert "SPD recovers over x1/2-x2 of its paper importance_minimality_coeff (0.003)" in a.answer
    assert "APD recovers over x1/2-x1 of its paper topk (0.211)" in a.answer
    assert "APD 2/5 settings (6/15 instances over 15 seeds), SPD 3/5 settings" in a.answer

    path = write_report(a, tmp_path / "report")
    text = path.read_text()
    assert "## Methods side by side" in text
    assert (
        "| APD | topk | 0.211 | x1/4-x4 | 2/5 | 6/15 instances over 15 seeds "
        "| x1/4: 0/3, x1/2: 3/3, x1: 3/3, x2: 0/3, x4: 0/3 | x1/2-x1 |" in text
    )
    assert (
        "| SPD | importance_minimality_coeff | 0.003 | x1/4-x4 | 3/5 | 11/15 instances over 15 seeds "
        "| x1/4: 2/3, x1/2: 3/3, x1: 3/3, x2: 3/3, x4: 0/3 | x1/2-x2 |" in text
    )
    # the per-target table counts judged settings, as the answer does
    assert "| TMS 5-2 (tms-5-2) | 2/5 settings; 6/15 instances over 15 seeds | 3/5 settings;" in text
    assert (tmp_path / "report" / "compare-tms-5-2-recovery.png").stat().st_size > 0


def test_one_method_has_no_comparison(tmp_path: Path, capsys: Any) -> None:
    apd, spd = _sweeps(tmp_path)
    assert analyze([apd]).comparisons == []
    assert main(["analyze", str(apd), str(spd), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "Side by side on TMS 5-2" in printed and "SPD recovers over x1/2-x2" in printed
