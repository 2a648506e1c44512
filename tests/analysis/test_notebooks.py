"""The analysis notebooks: generated without outputs, and they run top to bottom on a real sweep."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "analysis"
NOTEBOOKS = ("recovery.ipynb", "trial.ipynb")


def _generator():  # analysis/ is a folder of scripts, not a package
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "make_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_git_is_generated_and_clean(name: str, tmp_path: Path) -> None:
    _generator().write_all(tmp_path)
    stored = nbformat.read(ROOT / name, as_version=4)
    assert json.loads((tmp_path / name).read_text()) == json.loads((ROOT / name).read_text()), (
        "regenerate with: .venv/bin/python analysis/make_notebooks.py"
    )
    first = next(c for c in stored.cells if c.cell_type == "code")
    assert first.metadata.get("tags") == ["parameters"] and "os.environ.get" in first.source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in stored.cells if c.cell_type == "code")


def _run(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> nbformat.NotebookNode:
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the kernel inherits the environment: the parameter cell reads it
    nb = nbformat.read(ROOT / name, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + str(out.get("data", {}).get("text/markdown", "")))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


@pytest.mark.slow
def test_recovery_notebook_runs(inline_sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as documented: `APD_RESULTS=out jupyter lab analysis/recovery.ipynb` started in the folder that
    # holds `out`; Jupyter runs the kernel in the notebook's folder, and the shell's $PWD stays
    env = {
        "APD_RESULTS": inline_sweep.name,
        "PWD": str(inline_sweep.parent),
        "APD_EVAL": "mmcs_min=0.5,ml2r_min=0.0,require_one_to_one=false",
    }
    nb = _run("recovery.ipynb", env, monkeypatch, ROOT)
    text, images = _outputs(nb)
    assert f"sweeps: {inline_sweep}" in text
    assert "**Answer.** No " in text and "apd decompose tms-5-2" in text
    assert "With {'mmcs_min': 0.5" in text
    assert images >= 4  # recovery map, importances, metrics, learning curves (+ failure modes, Pareto)


@pytest.mark.slow
def test_trial_notebook_runs_and_rerenders(inline_sweep: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a path relative to the repository root, from a shell whose $PWD does not hold it
    env = {"APD_RESULTS": os.path.relpath(inline_sweep, REPO), "APD_TRIAL": "t0001", "PWD": str(tmp_path)}
    nb = _run("trial.ipynb", env, monkeypatch, ROOT)
    text, images = _outputs(nb)
    assert f"sweep: {REPO / os.path.relpath(inline_sweep, REPO)}" in text
    assert "**Trial t0001** of tiny-tms (tms-5-2, seed 0)" in text
    stored = sorted(p.name for p in (inline_sweep / "trials" / "t0001" / "figures").glob("*.png"))
    assert stored and all(f"`{name}`" in text for name in stored)
    # the learning curve, the stored figures, and the same figures redrawn from components.pt
    assert images == 1 + 2 * len(stored)


def test_kernel_is_this_python() -> None:
    # nbclient's "python3" kernel resolves to the interpreter running the tests (the venv)
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable)


def test_results_resolve_from_the_launch_folder_then_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apd.analysis import resolve_results

    (tmp_path / "launch" / "out" / "a").mkdir(parents=True)
    (tmp_path / "repo" / "analysis").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    (tmp_path / "repo" / "out" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "analysis")  # where a notebook's kernel runs
    monkeypatch.setenv("PWD", str(tmp_path / "launch"))
    got = resolve_results(" out/a, out/b ,/abs/c,out/missing")
    assert got == [
        tmp_path / "launch" / "out" / "a",  # from $PWD
        tmp_path / "repo" / "out" / "b",  # from the repository root
        Path("/abs/c"),  # absolute: as given
        tmp_path / "launch" / "out" / "missing",  # nowhere: reported under $PWD
    ]
    monkeypatch.delenv("PWD")
    assert resolve_results(["out/b"]) == [tmp_path / "repo" / "out" / "b"]
