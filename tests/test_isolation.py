"""A job exposes nothing and leaves nothing behind: a single-node job listens on loopback
only, and a Jupyter kernel restarted or shut down mid-run takes the whole job with it
(real torchrun, a real ipykernel)."""

import ipaddress
import socket
import time

import psutil
import pytest

import labkit
from labkit.jobs.command import Command, start
from conftest import REPO, processes_of, ranks_of

# A run far longer than any test waits (an epoch of the tiny set takes seconds): whatever is
# gone afterwards was stopped, not finished.
FAST = dict(model="simple_cnn", workers=0, augment=False, batch_size=16, calibration_steps=0, epochs=100)


def assert_nothing_left(folder, timeout=20.0):
    deadline = time.time() + timeout
    while processes_of(folder) and time.time() < deadline:
        time.sleep(0.5)
    left = processes_of(folder)
    assert not left, f"left running: {[(p.pid, p.cmdline()[:6]) for p in left]}"


def wait_for_first_step(run_dir, timeout=180.0):
    deadline = time.time() + timeout
    progress = run_dir / "progress.jsonl"
    while not (progress.exists() and progress.read_bytes().strip()) and time.time() < deadline:
        time.sleep(0.5)
    assert progress.exists() and progress.read_bytes().strip(), "the run made no step"


def listening_sockets(pids: set[int]) -> list:
    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_a_single_node_job_listens_on_loopback_only(tmp_path):
    run_dir = tmp_path / "run"
    job = labkit.launch(profile="cpu", strategy="allreduce", nproc=2, out_dir=str(run_dir), **FAST)
    try:
        wait_for_first_step(run_dir)  # rendezvous done, gloo connected: every socket is open now
        family = psutil.Process(job.handle.pid).children(recursive=True) + [psutil.Process(job.handle.pid)]
        sockets = listening_sockets({p.pid for p in family})
    finally:
        job.cancel()
    # The agent's rendezvous store and the ranks' gloo pairs listen: an empty list would mean we looked wrong.
    assert sockets, "found no listening socket at all"
    exposed = [(c.pid, c.laddr) for c in sockets if not ipaddress.ip_address(c.laddr.ip).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed} (all: {[(c.pid, c.laddr) for c in sockets]})"
    assert_nothing_left(run_dir)


def start_kernel():
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(REPO))
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=120)
    return km, client


@pytest.mark.parametrize("how", ["restart", pytest.param("shutdown", marks=pytest.mark.slow)])
def test_a_kernel_restart_or_shutdown_mid_run_leaves_no_process(tmp_path, how):
    run_dir = tmp_path / "run"
    km, client = start_kernel()
    try:
        client.execute(f"import labkit; job = labkit.launch(profile='cpu', strategy='allreduce', nproc=2, "
                       f"out_dir={str(run_dir)!r}, **{FAST!r})")
        wait_for_first_step(run_dir)
        assert len(ranks_of(run_dir)) == 2
        if how == "restart":
            km.restart_kernel(now=True)  # what JupyterLab's "Restart kernel" does
        else:
            km.shutdown_kernel(now=False)  # a polite shutdown: the kernel exits by itself
    finally:
        client.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
    assert_nothing_left(run_dir)


def test_sigkill_of_torchrun_takes_its_ranks_with_it(tmp_path):
    run_dir = tmp_path / "run"
    job = labkit.launch(profile="cpu", strategy="allreduce", nproc=2, out_dir=str(run_dir), **FAST)
    wait_for_first_step(run_dir)
    assert len(ranks_of(run_dir)) == 2
    psutil.Process(job.handle.pid).kill()  # the agent, which became torchrun: no chance to stop its ranks
    job.handle.wait(timeout=10)
    assert_nothing_left(run_dir)  # checked before the Job's own teardown (poll) could kill stragglers
    assert job.poll() == "failed"


@pytest.mark.slow  # the same cancel path as Ctrl-C during wait (tests/test_launch.py)
def test_papermills_execution_timeout_leaves_no_process(tmp_path):
    import nbformat
    import papermill

    run_dir = tmp_path / "run"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(  # a run far longer than the timeout
        f"import labkit\njob = labkit.launch(profile='cpu', strategy='allreduce', nproc=2, "
        f"out_dir={str(run_dir)!r}, **{FAST!r})\njob.wait()")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "in.ipynb")
    with pytest.raises(Exception, match="(?i)timeout|timed out"):
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(REPO),
                                   execution_timeout=60, progress_bar=False, kernel_name="python3")
    # Cut mid-run: torchrun had started its ranks (each has a log folder by then).
    assert (run_dir / "started").exists() and list((run_dir / "logs").glob("*/attempt_0/1")), "the run had not started"
    assert_nothing_left(run_dir)


def test_on_a_chosen_interface_every_store_binds_to_its_address_only(tmp_path):
    """What a job on several nodes does (docs/EXPERIMENT_GUIDE.md), on one: torchrun with the
    rendezvous on this machine's own address; nothing may listen on every interface."""
    chosen = [(name, a.address) for name, addrs in psutil.net_if_addrs().items() for a in addrs
              if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback]
    if not chosen:
        pytest.skip("this machine has no network interface besides loopback")
    interface, address = chosen[0]
    probe = tmp_path / "probe.py"  # a rank that joins the process group, says so, and waits to be told to go
    probe.write_text("import os, pathlib, time, torch.distributed as dist\n"
                     "dist.init_process_group('gloo'); dist.barrier()\n"
                     f"pathlib.Path({str(tmp_path)!r}, 'ready-' + os.environ['RANK']).touch()\n"
                     f"while not pathlib.Path({str(tmp_path)!r}, 'stop').exists(): time.sleep(0.2)\n"
                     "dist.barrier(); dist.destroy_process_group()\n")
    job = start(Command(str(probe), nproc=2, run_dir=tmp_path, run_id="probe", rdzv_endpoint=f"{address}:0",
                        rdzv_conf="is_host=1", local_addr=address, fork_ranks=False, cwd=REPO,
                        env={"GLOO_SOCKET_IFNAME": interface}))
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2 and job.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert len(list(tmp_path.glob("ready-*"))) == 2, "the ranks never joined"
        family = psutil.Process(job.pid).children(recursive=True) + [psutil.Process(job.pid)]
        sockets = listening_sockets({p.pid for p in family})
        (tmp_path / "stop").touch()
        assert job.wait(timeout=60) == 0, job.output()
    finally:
        job.kill()
        job.close()
    assert len({c.pid for c in sockets}) == 3  # the agent's stores and each rank's gloo
    assert {c.laddr.ip for c in sockets} == {address}, [(c.pid, c.laddr) for c in sockets]
