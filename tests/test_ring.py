"""The hand-written ring all-reduce is exact for any world size and buffer length."""

import subprocess

import pytest

from conftest import REPO
from labkit.jobs.torchrun import single_node_command


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_all_reduce_any_world_any_length(world):
    proc = subprocess.run([*single_node_command(world, "ring-check"), str(REPO / "tests" / "ring_check.py")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ring ok") == world
