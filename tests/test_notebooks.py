"""The notebooks: committed clean, and every one executes headless with papermill."""

import json

import pytest

from conftest import REPO

ALL_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))  # the lab and the collectives primer
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))  # the lab (`labkit lab` runs these)


def test_there_is_a_notebook_per_method():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_setup", "01_single_gpu", "02_ddp", "03_manual_allreduce", "04_parameter_server",
                     "05_advanced_allreduce", "06_compare", "07_beyond_one_machine"]
    assert [p.stem for p in ALL_NOTEBOOKS if p not in NOTEBOOKS] == ["00b_collectives_primer"]  # tests/test_primer.py


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[p.stem for p in ALL_NOTEBOOKS])
def test_committed_notebook_is_stripped_and_parameterised(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit it stripped"
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be tagged parameters"


@pytest.mark.slow  # the whole lab; in CI the primer (papermill) and 01 in a real browser run
def test_every_notebook_runs_headless(tmp_path, monkeypatch):
    from labkit.lab import run_notebooks

    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path))  # keep the lab's own results/ untouched
    written = run_notebooks({"profile": "cpu", "nproc": 2, "max_steps": 3}, log_output=False)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for path in written:
        cells = json.loads(path.read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], path.name
        if path.stem != "00_setup":
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 5
    report = (tmp_path / "performance_report.txt").read_text()
    for strategy in ("single", "ddp", "allreduce", "ps", "bucketed", "ring"):  # 06's interleaved sweep
        assert f" {strategy} " in report or f"\n{strategy} " in report, strategy
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("**/result.json")]
    # 01–04, 05's seven variants, 02's killed-and-resumed demo, 06's 6 methods × 2 rounds, and
    # 07's 8 methods × 2 link rates where this machine can emulate nodes
    from labkit.jobs.cluster import missing_capability
    assert len(results) == 4 + 7 + 1 + 12 + (16 if missing_capability() is None else 0)
    assert all(r["status"] == "ok" for r in results)
    assert any(r["config"]["resume"] and r["config"]["fault"] for r in results)
