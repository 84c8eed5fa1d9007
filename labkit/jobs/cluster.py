"""A small cluster emulated on one machine: a network namespace per node, shaped links.

On a laptop every rank talks over loopback, a memory copy between ranks that share the same
cores: communication is almost free, and the methods' designs never decide the ranking. Here
each node is a Linux network namespace with its own torchrun agent and its share of the
ranks; the nodes are joined by veth links to a bridge in the job's own hub namespace, and
each node's link is capped with tc's token bucket filter (tbf), both ways, like a network
card of that rate. Traffic inside a node stays on its loopback, unshaped.

         hub namespace:  br0 ── v0 ── v1 ── …          (a bridge: the "switch")
                                │      │
    node namespaces:          eth0   eth0              10.213.0.1, 10.213.0.2, …
                              ranks  ranks             (tbf rate LINK on both ends)

The addresses exist only on those veth ends, inside the job's namespaces: nothing is routed to
or from the machine's own interfaces, and no packet leaves the machine. The rendezvous of
real nodes (torchrun's c10d) runs across the namespaces, so the emulation exercises the real
multi-node path. gloo follows the shaping; NCCL's traffic may not (so emulation is gloo only).

Needs CAP_NET_ADMIN (root) and iproute2 (`ip`, `tc`). Names carry the launching process's
pid; a start removes what a killed job left (`remove_stale`), and every end removes its own.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

from labkit.config import parse_rate
from labkit.errors import ConfigError

PREFIX = "labkit-"  # every namespace this module makes: labkit-<pid>-<job>-hub / -n<k>
SUBNET = "10.213.0"  # inside the job's own namespaces only (a private range no route reaches)
RDZV_PORT = 29400
MAX_NODES = 9  # c10d orders nodes by address as text: 10.213.0.1 … .9 stay in node order


def missing_capability() -> str | None:
    """Why this machine cannot emulate nodes, in one line, or None."""
    if not (shutil.which("ip") and shutil.which("tc")):
        return "the emulated cluster needs iproute2's `ip` and `tc` (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "the emulated cluster needs CAP_NET_ADMIN to make network namespaces: run as root"
    return None


def sh(*args: str) -> None:
    """One ip/tc command; its error message, if any, in one line."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def remove_stale() -> list[str]:
    """Remove the namespaces of jobs whose launching process is gone (killed outright)."""
    stale = [ns for ns in namespaces() if not _alive(int(ns.split("-")[1]))]
    for ns in stale:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Network:
    """The namespaces, veth links, bridge and qdiscs of one emulated job."""

    def __init__(self, nodes: int, link: str, tag: str):
        self.nodes, self.link = nodes, link
        self.hub = f"{PREFIX}{os.getpid()}-{tag}-hub"
        self.node_ns = [f"{PREFIX}{os.getpid()}-{tag}-n{k}" for k in range(nodes)]

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def create(self) -> "Network":
        try:
            sh("ip", "netns", "add", self.hub)
            sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            for k, ns in enumerate(self.node_ns):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")  # traffic inside a node: loopback, unshaped
                sh("ip", "-n", self.hub, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", ns)
                sh("ip", "-n", self.hub, "link", "set", f"v{k}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.address(k)}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                if self.link:  # the node's card: out of it (eth0) and into it (the bridge's port v<k>)
                    self.shape(ns, "eth0")
                    self.shape(self.hub, f"v{k}")
        except BaseException:
            self.remove()
            raise
        return self

    def shape(self, ns: str, device: str) -> None:
        rate = parse_rate(self.link)
        # tbf's bucket: what may pass at once, at full speed, after a quiet moment. Kept to ~4 ms of
        # traffic (two full-size packets at least): a bigger one would let each step's first burst
        # through unshaped (a 64 KB bucket halved a 125 KB step's time at 5 Mbit/s). latency bounds
        # the queue (past it, tbf drops and TCP slows down).
        burst = max(int(rate / 8 / 250), 2 * 1514)
        sh("tc", "-n", ns, "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{int(rate)}bit",
           "burst", str(burst), "latency", "100ms")

    def remove(self) -> None:
        """Delete every namespace (their veths and qdiscs go with them). Idempotent."""
        for ns in [*self.node_ns, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class EmulatedCluster:
    """A started emulated job: one torchrun agent per node namespace; the same face as the
    launcher's `Torchrun` handle (poll, wait, stop, kill, leftovers, close, failure)."""

    FAILED_PEER_GRACE_S = 30.0  # after one node failed, the others get this long to notice

    def __init__(self, launch, nodes: int, link: str):
        from labkit.jobs.launcher import start

        why = missing_capability()
        if why:
            raise ConfigError(why)
        if nodes > MAX_NODES:
            raise ConfigError(f"at most {MAX_NODES} emulated nodes (got {nodes})")
        remove_stale()
        self.network = Network(nodes, link, tag=f"{int(time.time() * 1000) % 100000:05d}").create()
        self.handles = []
        try:
            for k, ns in enumerate(self.network.node_ns):
                self.handles.append(start(dataclasses.replace(
                    launch, nnodes=nodes, node_rank=k, netns=ns, rdzv_endpoint=f"{self.network.address(0)}:{RDZV_PORT}",
                    local_addr=self.network.address(k), rdzv_conf=f"is_host={int(k == 0)}",
                    log_dir=Path(launch.logs) / f"node-{k}", queue_lock=launch.queue_lock if k == 0 else None,
                    env={**launch.env, "GLOO_SOCKET_IFNAME": "eth0"})))
        except BaseException:
            self.kill()
            raise
        self.started = self.handles[0].started
        self.first_failure_at = None

    @property
    def pid(self) -> int:
        return self.handles[0].pid

    @property
    def returncode(self) -> int | None:
        codes = [h.returncode for h in self.handles]
        return None if None in codes else next((c for c in codes if c), 0)

    def poll(self) -> int | None:
        codes = [h.poll() for h in self.handles]
        if None in codes and any(codes):  # a node failed: give the others a moment to see it
            self.first_failure_at = self.first_failure_at or time.time()
            if time.time() - self.first_failure_at > self.FAILED_PEER_GRACE_S:
                self.kill()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline and time.time() > deadline:
                raise subprocess.TimeoutExpired("emulated cluster", timeout)
            time.sleep(0.1)
        return self.returncode

    def stop(self, grace_s: float = 10.0) -> list[str]:
        return [line for h in self.handles for line in h.stop(grace_s)] + self._remove_network()

    def kill(self) -> list[str]:
        return [line for h in self.handles for line in h.kill()] + self._remove_network()

    def leftovers(self) -> list[str]:
        return [line for h in self.handles for line in h.leftovers()] + self._remove_network()

    def _remove_network(self) -> list[str]:
        self.network.remove()
        return []

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.network.remove()

    def failure(self) -> dict | None:
        """The earliest failure of any node that is not only a lost peer."""
        from labkit.jobs.failures import LOST_PEER

        found = [f for f in (h.failure() for h in self.handles) if f]
        own = [f for f in found if not LOST_PEER.search(f.get("exception", ""))]
        return (own or found or [None])[0]
