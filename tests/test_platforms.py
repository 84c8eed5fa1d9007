"""The code paths of another system, run here with the system faked (sys.platform, the
interface table): macOS's loopback name, dying with a parent without PR_SET_PDEATHSIG (a real
parent killed outright, a real child watching it), and the Linux-only facts asked only on Linux."""

import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from conftest import REPO
from labkit import hardware, system
from labkit.jobs import processes


def address(ip):
    return SimpleNamespace(family=socket.AF_INET, address=ip)


def test_the_loopback_interface_is_asked_of_the_system(monkeypatch):
    assert system.loopback_interface() == ("lo0" if sys.platform == "darwin" else "lo")  # psutil's own table
    macos = {"lo0": [address("127.0.0.1")], "en0": [address("192.168.1.20")], "gif0": []}
    assert system.loopback_interface(macos) == "lo0"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert system.is_macos() and not system.is_linux() and system.name() == "macOS"
    assert system.loopback_interface({}) == "lo0"  # nothing says: the system's usual name
    monkeypatch.setattr(sys, "platform", "linux")
    assert system.loopback_interface({}) == "lo"


def test_torchrun_binds_gloo_to_the_loopback_the_system_names(tmp_path):
    """A one-node job on this machine: GLOO_SOCKET_IFNAME is what loopback_interface() says."""
    from labkit.jobs.command import Command, run

    probe = tmp_path / "probe.py"
    probe.write_text("import os; print('ifname', os.environ.get('GLOO_SOCKET_IFNAME'), flush=True)\n")
    handle = run(Command(str(probe), nproc=1, run_dir=tmp_path, fork_ranks=False, cwd=REPO), timeout_s=120)
    assert f"ifname {system.loopback_interface()}" in handle.output()


# -- dying with a parent --------------------------------------------------------------

CHILD = """
import os, signal, sys, time
import psutil                           # the real system's psutil (it picks its backend on import)
sys.platform = sys.argv[1]              # the system faked before labkit looks at it
from labkit.jobs.processes import die_with_parent
how = die_with_parent(os.getppid(), signal.SIGKILL, watch=sys.argv[2] == "watch")
print(how, flush=True)
time.sleep(600)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def parent_with_child(platform_name: str, watch: bool) -> tuple[psutil.Process, psutil.Process, str]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, platform_name, "watch" if watch else "no"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    pid, how = parent.stdout.readline().split()
    return parent, psutil.Process(int(pid)), how


def ended_within(proc: psutil.Process, seconds: float) -> bool:
    return not processes.wait_ended([proc], seconds)


@pytest.mark.parametrize("platform_name, how", [
    pytest.param("linux", "kernel", marks=pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                              reason="PR_SET_PDEATHSIG is Linux's own")),
    ("darwin", "watcher")])
def test_a_child_dies_with_its_parent_killed_outright(platform_name, how):
    """Linux: the kernel's PR_SET_PDEATHSIG. Faked as macOS (no such signal): the watcher thread
    sees the parent gone and ends the child, as the real one would there."""
    parent, child, said = parent_with_child(platform_name, watch=True)
    try:
        assert said == how
        assert child.is_running() and not ended_within(child, 0.5)  # alive while its parent is
        parent.kill()
        parent.wait()
        assert ended_within(child, 3 * processes.WATCH_INTERVAL_S + 2), f"{how}: the child outlived its parent"
    finally:
        processes.kill_all([child], timeout_s=5)


def test_a_forkserver_on_macos_starts_no_watcher():
    """watch=False (the forkserver: it must stay single-threaded to fork) asks only the kernel:
    on macOS nothing is armed, and the child outlives its parent (Python's forkserver ends by
    itself when its client is gone; the ranks watch their own parent)."""
    parent, child, said = parent_with_child("darwin", watch=False)
    try:
        assert said == "none"
        assert len(child.threads()) == 1  # no thread was started
        parent.kill()
        parent.wait()
        assert not ended_within(child, 1.0)
    finally:
        processes.kill_all([child], timeout_s=5)


def test_linux_only_facts_are_not_asked_elsewhere(monkeypatch, tmp_path):
    """On macOS: no NVIDIA driver files, no /proc/self/maps; the answers are 'none', not errors."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 535.104.05'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:/usr/bin:/bin")
    monkeypatch.setattr(sys, "platform", "linux")
    assert hardware.system_gpus()  # on Linux the stand-in nvidia-smi is asked
    monkeypatch.setattr(sys, "platform", "darwin")
    assert hardware.system_gpus() == [] and hardware.nccl_loaded() is None
    assert hardware.unusable_gpus() is None


def test_the_check_names_the_system(monkeypatch):
    rows = dict(hardware.machine_lines())
    assert rows["system"].startswith(f"{system.name()} ")
    monkeypatch.setattr(sys, "platform", "win32")
    rows = dict(hardware.machine_lines())
    assert "use WSL2" in rows["system"]
