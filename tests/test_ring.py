"""The hand-written ring all-reduce is exact for any world size and buffer length."""

import pytest

from conftest import REPO
from labkit.jobs.command import Command, run


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_all_reduce_any_world_any_length(world, tmp_path):
    job = run(Command(str(REPO / "tests" / "ring_check.py"), nproc=world, run_dir=tmp_path, run_id="ring-check",
                      fork_ranks=False, cwd=REPO), timeout_s=120)  # raises with the log's end if a rank failed
    assert job.output(100_000).count("ring ok") == world
