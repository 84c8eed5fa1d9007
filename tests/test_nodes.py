"""Beyond one machine: real nodes (two torchrun agents on loopback joined by c10d), and nodes
emulated in network namespaces with shaped links (skipped, with the reason, where the machine
cannot make namespaces) — as root, and without root's powers (CAP_NET_ADMIN and CAP_SYS_ADMIN
dropped with capsh: an unprivileged user + network namespace per job)."""

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import labkit
from conftest import REPO, max_param_diff, processes_of, run_to
from labkit.jobs import cluster
from labkit.jobs.command import Command

TIGHT = 1e-9  # float64: the exact methods agree with DDP to rounding (~1e-15)
EXACT = ("model=simple_cnn", "augment=false", "batch_size=4", "workers=0", "dtype=float64", "lr_warmup_steps=0")
CANNOT_EMULATE = cluster.missing_capability()
needs_namespaces = pytest.mark.skipif(CANNOT_EMULATE is not None, reason=CANNOT_EMULATE or "")


@pytest.fixture(scope="module")
def ddp4(tmp_path_factory):
    """The reference: 4-rank DDP on one node, float64, 3 steps."""
    return run_to(tmp_path_factory.mktemp("ddp4") / "run", "ddp", 4, *EXACT)[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_real_nodes_on_loopback_end_with_four_rank_ddps_parameters(ddp4, tmp_path):
    """Two `labkit run --nnodes 2 --node-rank R` on one machine: two torchrun agents, one c10d
    rendezvous, one world of 4 ranks; rank 0 writes the run's result, each node keeps its logs."""
    out, port = tmp_path / "run", free_port()
    sets = [arg for item in EXACT + ("calibration_steps=0",) for arg in ("--set", item)]
    nodes = [subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", "--strategy", "ddp", "--profile", "cpu",
                               "--nproc", "4", "--max-steps", "3", "--nnodes", "2", "--node-rank", str(rank),
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--interface", "lo", "--name", "two-nodes",
                               "--out", str(out), *sets],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["world_size"] == 4 and result["config"]["nodes"] == 2
    assert (out / "logs" / "node-0" / "launcher.log").exists() and (out / "logs" / "node-1" / "launcher.log").exists()
    import torch

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert max_param_diff(ddp4, checkpoint) < TIGHT


@pytest.mark.parametrize("settings, message", [
    (dict(nodes=3), "3 nodes do not divide 4 ranks"),
    (dict(nodes=2, node_rank=2, rdzv_endpoint="h:1", name="n"), "node rank 2 is out of range for 2 node(s)"),
    (dict(nodes=2, rdzv_endpoint="nohostport", name="n"), "is not HOST:PORT"),
    (dict(nodes=2, rdzv_endpoint="h:1"), "need the same --name on every node"),
    (dict(nodes=2, link="fast"), "is not a rate tc can shape to"),
    (dict(link="1gbit"), "add --set nodes=N"),
])
def test_bad_node_settings_get_one_line(settings, message, tmp_path):
    with pytest.raises(labkit.ConfigError, match=re.escape(message)) as error:
        labkit.make_config("cpu", strategy="ddp", nproc=4, out_dir=str(tmp_path / "x"), **settings)
    assert "\n" not in str(error.value) and not (tmp_path / "x").exists()


# -- emulated nodes -----------------------------------------------------------------

def host_links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def assert_no_namespace_left(links_before):
    assert not cluster.namespaces(), cluster.namespaces()
    assert host_links() == links_before  # veths live only inside the job's namespaces


BUSBW_PROBE = (
    "import time, torch, torch.distributed as dist\n"
    "dist.init_process_group('gloo'); x = torch.ones(1 << 20)  # 4 MB of float32\n"
    "dist.all_reduce(x[:1024]); times = []\n"
    "for _ in range(3):\n"
    "    dist.barrier(); t = time.perf_counter(); dist.all_reduce(x); times.append(time.perf_counter() - t)\n"
    "n = dist.get_world_size(); busbw = 2 * (n - 1) / n * x.numel() * 4 / min(times)\n"
    "if dist.get_rank() == 0: print(f'busbw_bytes_s {busbw:.0f}', flush=True)\n"
    "dist.destroy_process_group()\n")


@needs_namespaces
def test_a_shaped_link_caps_all_reduce_bandwidth(tmp_path):
    """2 nodes × 1 rank at 100 Mbit/s: a 4 MB all-reduce's bus bandwidth is the link's rate."""
    probe = tmp_path / "probe.py"
    probe.write_text(BUSBW_PROBE)
    links = host_links()
    job = cluster.EmulatedCluster(Command(str(probe), nproc=1, run_dir=tmp_path, fork_ranks=False, cwd=REPO),
                                  nodes=2, link="100mbit")
    try:
        assert job.wait(timeout=180) == 0, [h.output() for h in job.handles]
        busbw = float(job.handles[0].output(20_000).split("busbw_bytes_s")[-1].split()[0])
    finally:
        job.kill()
        job.close()
    assert 0.75 * 12.5e6 <= busbw <= 1.25 * 12.5e6, busbw  # 100 Mbit/s = 12.5 MB/s, ±25 %
    assert_no_namespace_left(links)


@needs_namespaces
def test_hierarchical_on_two_emulated_nodes_equals_ddp(ddp4, tmp_path):
    links = host_links()
    result, checkpoint = run_to(tmp_path / "hier", "hierarchical", 4, *EXACT, "nodes=2", "link=10gbit")
    assert max_param_diff(ddp4, checkpoint) < TIGHT
    # What crossed each node's link (the kernel's count): one leader per node all-reduces the
    # gradients with the other, S each way (2(n−1)/n · S for n = 2 leaders), plus TCP's headers.
    gradients = sum(t.numel() * t.element_size() for t in checkpoint["model"].values() if t.is_floating_point()
                    and t.dim() > 0)
    topology = result["topology"]
    assert topology["nodes"] == 2 and topology["ranks_per_node"] == 2 and topology["link"] == "10gbit"
    for node in topology["link_bytes_per_step"]:
        assert gradients <= node["tx_bytes"] <= 1.3 * gradients, (node, gradients)
    assert_no_namespace_left(links)


@needs_namespaces
def test_at_a_slow_link_the_designs_decide_the_ranking(tmp_path):
    """2 nodes × 2 ranks at 5 Mbit/s, simple_cnn (S = 80 KB of gradients, so compute is short and
    the link decides), as notebook 07: node 1's two workers push 2 · S to the server and pull
    2 · S back, one after the other; DDP's ring puts 1.5 · S on the link both ways at once;
    PowerSGD a few KB
    (compressing from step 2: steps 3 and 4 are measured). At 1 Gbit/s with resnet18_small the
    same order held once (6.5, 2.5, 1.4 s a step) and not the next time: compute decided there."""
    step = {}
    for strategy, options in (("ddp", {}), ("ps", {}), ("powersgd", {"powersgd_start_iter": 2})):
        result = labkit.run(profile="cpu", strategy=strategy, nproc=4, nodes=2, link="5mbit", model="simple_cnn",
                            max_steps=4, timing_warmup_steps=2, calibration_steps=0, workers=0, progress=False,
                            out_dir=str(tmp_path / strategy), **options)
        assert result["config"]["link"] == "5mbit"
        step[strategy] = result["summary"]["step_time_median_s"]
    assert step["ps"] > 1.5 * step["ddp"] and step["powersgd"] < step["ddp"], step
    assert not cluster.namespaces()


@needs_namespaces
def test_nothing_is_left_after_a_cancel_or_a_sigkill(tmp_path):
    links = host_links()
    long_run = dict(profile="cpu", strategy="ddp", nproc=2, nodes=2, model="simple_cnn", epochs=100, workers=0,
                    calibration_steps=0)
    job = labkit.launch(**long_run, out_dir=str(tmp_path / "cancelled"))
    deadline = time.time() + 120
    while not job.progress() and time.time() < deadline:
        time.sleep(0.5)
    assert job.progress(), "the emulated run never made a step"
    job.cancel()
    assert job.status == "interrupted" and not processes_of(tmp_path / "cancelled")
    assert_no_namespace_left(links)

    # The launching process itself killed outright: its ranks die with it (the PDEATHSIG
    # chain); its namespaces are stale until the next start removes them.
    script = ("import labkit, sys, time\n"
              f"job = labkit.launch(**{long_run!r}, out_dir=sys.argv[1])\n"
              "while not job.progress(): time.sleep(0.2)\n"
              "print('running', flush=True); time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed")], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "running"
    assert cluster.namespaces()
    psutil.Process(owner.pid).kill()
    owner.wait()
    deadline = time.time() + 30
    while processes_of(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.5)
    assert not processes_of(tmp_path / "killed")
    assert cluster.remove_stale() and not cluster.namespaces()  # what the next start does
    assert host_links() == links


# -- which way: root, user namespaces, or none ------------------------------------------

BOTH = 1 << cluster.CAP_NET_ADMIN | 1 << cluster.CAP_SYS_ADMIN


def everything_installed(name):
    return f"/usr/bin/{name}"


def test_the_mode_follows_the_capabilities_not_the_uid():
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001fffedfefff\n"  # what capsh --drop leaves
    assert cluster.effective_capabilities(status) == 0x1fffedfefff and not cluster.has_admin_capabilities(0x1fffedfefff)
    assert cluster.has_admin_capabilities(0x1fffeffffff)  # root's full set
    works = lambda: None  # noqa: E731 — the probe's answer where user namespaces are allowed
    assert cluster.detect_mode(BOTH, works, everything_installed)[0] == "root"
    assert cluster.detect_mode(1 << cluster.CAP_NET_ADMIN, works, everything_installed)[0] == "user namespaces"
    assert cluster.detect_mode(0, works, everything_installed)[0] == "user namespaces"
    how, why = cluster.detect_mode(0, works, lambda name: None if name == "nsenter" else f"/usr/bin/{name}")
    assert how == "none" and "util-linux's `unshare` and `nsenter`" in why


@pytest.mark.parametrize("switch, value, fix", [
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    ("kernel/unprivileged_userns_clone", "0", "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sudo sysctl -w user.max_user_namespaces=15000"),
])
def test_a_kernel_that_forbids_user_namespaces_is_named_with_the_fix(switch, value, fix, tmp_path, monkeypatch):
    (tmp_path / switch).parent.mkdir(parents=True)
    (tmp_path / switch).write_text(value + "\n")
    monkeypatch.setattr(cluster, "SYSCTL", tmp_path)
    refused = "unshare: unshare failed: Operation not permitted"
    how, why = cluster.detect_mode(0, lambda: refused, everything_installed)
    assert how == "none" and refused in why and f"`{fix}`" in why and "or run as root" in why and "\n" not in why


def test_off_linux_the_cluster_says_it_needs_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    how, why = cluster.detect_mode(BOTH, lambda: None, everything_installed)
    assert how == "none" and why.startswith("the emulated cluster needs Linux network namespaces, which macOS") \
        and "notebook 07 shows its stored reference run" in why


def test_a_job_holds_a_process_tree_or_an_emulated_cluster_with_the_same_face():
    """Job.handle is a StartedProcesses (labkit.jobs.job): one ProcessTree, or an EmulatedCluster
    of them; each has every name it declares (`started` is set in __init__)."""
    import inspect

    from labkit.jobs.command import ProcessTree
    from labkit.jobs.job import StartedProcesses

    asked = {name for name in vars(StartedProcesses) if not name.startswith("_")} | set(StartedProcesses.__annotations__)
    assert {"pid", "returncode", "poll", "wait", "stop", "leftovers", "close", "failure", "started"} <= asked
    for kind in (ProcessTree, cluster.EmulatedCluster):
        missing = [name for name in sorted(asked)
                   if not hasattr(kind, name) and f"self.{name} =" not in inspect.getsource(kind)]
        assert not missing, f"{kind.__name__} lacks {missing}"


def test_labkit_machine_says_which_mode_this_machine_has():
    from conftest import labkit_cli

    row = next(line for line in labkit_cli("machine").stdout.splitlines() if line.startswith("emulated cluster"))
    assert row.split(None, 2)[2].startswith(f"{cluster.mode()[0]} — ")


# -- without root's powers ----------------------------------------------------------------

def without_admin(*command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `command` without CAP_NET_ADMIN and CAP_SYS_ADMIN: through capsh where this process
    has them (root), as it is where it has not. Skipped, in one line, where that cannot be made
    or the kernel forbids unprivileged user namespaces."""
    if cluster.has_admin_capabilities():
        capsh = shutil.which("capsh")
        if not capsh:
            pytest.skip("capsh is missing (apt-get install libcap2-bin): root's capabilities cannot be dropped")
        command = (capsh, "--drop=cap_net_admin,cap_sys_admin", "--", "-c", shlex.join(command))
    answer = cluster.userns_probe()
    if answer is not None:
        pytest.skip(cluster.userns_forbidden(answer))
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


ROOTLESS_PROBE = """
import sys
from pathlib import Path
from labkit.jobs import cluster
from labkit.jobs.command import Command

print("mode", cluster.mode()[0].replace(" ", "_"), "effective", hex(cluster.effective_capabilities()), flush=True)
out = Path(sys.argv[2])
job = cluster.EmulatedCluster(Command(sys.argv[1], nproc=1, run_dir=out, fork_ranks=False), nodes=2, link="100mbit")
print("namespaces", len(cluster.namespaces()), flush=True)
try:
    assert job.wait(timeout=180) == 0, [h.output() for h in job.handles]
    busbw = job.handles[0].output(20_000).split("busbw_bytes_s")[-1].split()[0]
    print("busbw", busbw, flush=True)
finally:
    job.kill()
    job.close()
print("left", len(cluster.namespaces()), flush=True)
"""


def test_without_root_a_shaped_link_caps_all_reduce_bandwidth(tmp_path):
    """2 nodes × 1 rank at 100 Mbit/s, made with CAP_NET_ADMIN and CAP_SYS_ADMIN dropped: the job's
    own user namespace, the bus bandwidth the link's rate, and nothing left after it."""
    probe, script = tmp_path / "probe.py", tmp_path / "rootless.py"
    probe.write_text(BUSBW_PROBE)
    script.write_text(ROOTLESS_PROBE)
    links = host_links()
    proc = without_admin(sys.executable, str(script), str(probe), str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    said = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert said["mode"].startswith("user_namespaces") and not cluster.has_admin_capabilities(
        int(said["mode"].split()[-1], 16)), said
    assert said["namespaces"] == "3" and said["left"] == "0", said  # the hub and two nodes, then none
    assert 0.75 * 12.5e6 <= float(said["busbw"]) <= 1.25 * 12.5e6, said
    assert not cluster.holders() and not processes_of(tmp_path / "run")
    assert_no_namespace_left(links)


def test_without_root_a_run_on_two_nodes_counts_its_link(ddp4, tmp_path):
    """`labkit run` on 2 emulated nodes × 2 ranks with CAP_NET_ADMIN and CAP_SYS_ADMIN dropped:
    ends with 4-rank DDP's parameters, and each node's link counters (its own /sys, in its own
    mount namespace) carry the leaders' all-reduce, as the root way's do."""
    import torch

    out, links = tmp_path / "run", host_links()
    sets = [arg for item in (*EXACT, "calibration_steps=0", "nodes=2", "link=1gbit") for arg in ("--set", item)]
    proc = without_admin(sys.executable, "-m", "labkit.cli", "run", "--strategy", "hierarchical", "--profile", "cpu",
                         "--nproc", "4", "--max-steps", "3", "--out", str(out), *sets)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert result["status"] == "ok" and max_param_diff(ddp4, checkpoint) < TIGHT
    gradients = sum(t.numel() * t.element_size() for t in checkpoint["model"].values() if t.is_floating_point()
                    and t.dim() > 0)
    counted = result["topology"]["link_bytes_per_step"]
    assert [node["node"] for node in counted] == [0, 1], counted  # each node read its own eth0
    for node in counted:
        assert gradients <= node["tx_bytes"] <= 1.3 * gradients, (node, gradients)
    assert not cluster.holders() and not processes_of(out)
    assert_no_namespace_left(links)
