"""The notebooks: committed clean, and every one executes headless with papermill."""

import json

import pytest

from conftest import REPO

ALL_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NOTEBOOKS = ALL_NOTEBOOKS  # the lab: `labkit lab` runs every notebook, in sorted order


def test_there_is_a_notebook_per_method():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_setup", "00b_collectives_primer", "01_single_gpu", "02_ddp", "02b_batchnorm",
                     "03_manual_allreduce",
                     "04_parameter_server", "05_advanced_allreduce", "05b_communicate_less", "06_compare",
                     "07_beyond_one_machine", "08_debugging"]


def test_the_lab_runs_every_notebook_in_sorted_order_and_picks_by_number():
    from labkit.config import ConfigError
    from labkit.lab import notebook_paths

    assert notebook_paths() == NOTEBOOKS  # a new 05c_… joins the lab where its name sorts
    assert [p.stem for p in notebook_paths(["00b", "05"])] == ["00b_collectives_primer", "05_advanced_allreduce"]
    with pytest.raises(ConfigError, match="choose from 00, 00b, 01"):
        notebook_paths(["9"])


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
    for strategy in ("single", "ddp", "allreduce", "ps"):  # 06's interleaved sweep
        assert f" {strategy} " in report or f"\n{strategy} " in report, strategy
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("**/result.json")]
    # 01's run; 02's killed-and-resumed demo; 02b's single, ddp and ddp with sync_bn; 03's allreduce and
    # bucketed × 2 rounds; 05's seven variants;
    # 05b's 5 methods, its 2 memory runs, 2 straggler runs and the student's choice; 06's 4 methods × 3
    # rounds; and where this machine can emulate nodes, 02's overlap pair, 04's ps and ring at n = 2, 3, 4,
    # 05's three bucket sizes and 07's 7 methods × 2 link rates (00b's primer ranks write no result);
    # 08's planted desync, twice (the record's report, then TORCH_DISTRIBUTED_DEBUG=DETAIL's), fails on purpose
    from labkit.jobs.cluster import missing_capability
    emulated = missing_capability() is None
    assert len(results) == 1 + 1 + 3 + 2 * 2 + 7 + (5 + 2 + 2 + 1) + 12 + ((2 + 6 + 3 + 14) if emulated else 0) + 2
    desyncs = [r for r in results if r["config"]["fault"].endswith(":skip")]
    assert len(desyncs) == 2 and all(r["status"] == "failed" and r["failure"]["collectives"]["odd_rank"] == 1
                                     for r in desyncs)
    assert all(r["status"] == "ok" for r in results if r not in desyncs)
    assert any(r["config"]["resume"] and r["config"]["fault"] for r in results)
