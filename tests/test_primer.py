"""The collectives primer: committed clean, runs headless with papermill on 4 real gloo
ranks, shows what each collective did, and leaves no rank behind."""

import json
import time

import psutil
import pytest

from conftest import REPO

PRIMER = REPO / "notebooks" / "00b_collectives_primer.ipynb"


def test_primer_is_committed_stripped_and_parameterised():
    cells = json.loads(PRIMER.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit it stripped"
    assert "parameters" in code[0]["metadata"].get("tags", [])


def test_primer_reads_this_machines_alpha_and_beta_from_the_benchmark(tmp_path):
    """With a microbenchmark of the same world size on disk, its send_recv fit is used (no ranks
    needed); a benchmark of another world size is not."""
    from types import SimpleNamespace

    from labkit.notebook.primer import link_alpha_beta, link_text

    bench = tmp_path / "collectives.json"
    rows = [{"op": "send_recv", "size_bytes": s, "time_s": 1e-3 + s * 1e-9} for s in (1e3, 1e5, 1e7)]
    bench.write_text(json.dumps({"world_size": 4, "rows": rows}))
    link = link_alpha_beta(SimpleNamespace(n=4), bench)
    assert link["alpha_s"] == pytest.approx(1e-3, rel=1e-3) and "microbenchmark" in link["source"]
    assert link_text(link) == "α = 1000 µs, β = 1 ns/byte (1/β = 1.00 GB/s)"
    with pytest.raises(AttributeError):  # another world size: it would measure on the (absent) ranks
        link_alpha_beta(SimpleNamespace(n=2), bench)


def test_primer_runs_headless(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the ranks' folder lands here: leftovers are findable
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path / "results"))  # no benchmark: α and β measured live
    out = tmp_path / "primer.ipynb"
    papermill.execute_notebook(str(PRIMER), str(out), parameters={"nproc": 4}, cwd=str(REPO),
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the α–β plot and the ring frames
    tables = [o["data"]["text/plain"] for o in outputs if "x after" in "".join(o.get("data", {}).get("text/plain", ""))]
    all_reduce = "".join(tables[3])  # send/recv, broadcast, reduce, all_reduce …
    assert all_reduce.count("[10.0, 10.0, 10.0, 10.0]") == 4, all_reduce  # 1+2+3+4 on every rank
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "this machine: α = " in text and "measured now: a ring exchange" in text, text  # beside the example
    deadline = time.time() + 15
    while time.time() < deadline and any(str(tmp_path) in " ".join(p.info["cmdline"] or [])
                                         for p in psutil.process_iter(["cmdline"])):
        time.sleep(0.5)
    assert not any(str(tmp_path) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
