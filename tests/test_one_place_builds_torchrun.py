"""Every torchrun the lab starts is built and started by labkit/jobs/command.py: a labkit run,
the student check, the primer's ranks, the benchmarks, the tests. Anything else that spells out
a torchrun command line fails here."""

import ast
from pathlib import Path

from conftest import REPO

BUILDER = REPO / "labkit" / "jobs" / "command.py"  # the one module that writes torchrun's command line
# torchrun itself (it reads those arguments), this test (it names them) and test_torch_internals
# (it hands them to torch's own parser, starting nothing) may say them too.
ALLOWED = {BUILDER, REPO / "labkit" / "jobs" / "torchrun.py", Path(__file__).resolve(),
           Path(__file__).resolve().with_name("test_torch_internals.py")}
# Words that only a torchrun command line holds (as a string or an f-string's start, not in a
# docstring or comment). Not --rdzv-endpoint: `labkit run` has that flag too (several nodes).
TORCHRUN_WORDS = ("labkit.jobs.torchrun", "torch.distributed.run", "torchrun", "--nproc-per-node",
                  "--nproc_per_node", "--rdzv-backend", "--rdzv_backend", "--standalone", "--run-path")


def torchrun_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant that spells part of a torchrun command (an
    f-string's literal parts are constants too)."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and any(node.value == word or node.value.startswith(word + "=") for word in TORCHRUN_WORDS)]


def test_the_scan_finds_a_torchrun_command():
    assert torchrun_strings('import subprocess\nsubprocess.Popen(["python", "-m", "torch.distributed.run", '
                            '"--nproc-per-node=2", f"--rdzv-backend={b}", "x.py"])\n'
                            '"""torchrun in a docstring is fine"""\n') == [
        (2, "torch.distributed.run"), (2, "--nproc-per-node=2"), (2, "--rdzv-backend=")]


def test_nothing_but_jobs_command_builds_a_torchrun_command():
    files = [p for folder in ("labkit", "tests", "bench", "assignments") for p in (REPO / folder).rglob("*.py")]
    found = {str(p.relative_to(REPO)): hits for p in files if p not in ALLOWED
             and (hits := torchrun_strings(p.read_text()))}
    assert not found, f"torchrun started outside labkit/jobs/command.py: {found}"
    assert torchrun_strings(BUILDER.read_text()), "labkit/jobs/command.py itself should be found by the scan"
