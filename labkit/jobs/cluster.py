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

Two ways to make the namespaces, whichever this machine allows (`mode()`; `labkit machine` says it):
- **root** (CAP_NET_ADMIN and CAP_SYS_ADMIN in effect): named namespaces (`ip netns add`), each
  node's agent started with `ip netns exec`. Names carry the launching process's pid; a start
  removes what a killed job left (`remove_stale`), and every end removes its own.
- **user namespaces** (any user, where the kernel allows unprivileged ones): the job's own user
  namespace, in which the launching user is root, holds the hub's network namespace; each node's
  network (and mount) namespace is made inside it. A namespace needs a process to live: each is
  held by a small holder process (`python -c HOLD`) that ends when the job closes its stdin, and
  dies with the launching process (PDEATHSIG) when that is killed outright; a node's agent is
  started with `nsenter` into the holder's namespaces. Nothing is named in the file system, so
  nothing can go stale: when the last process in a namespace ends, the kernel frees it, veths
  and qdiscs with it.

Also needs Linux and iproute2 (`ip`, `tc`); the user-namespace way util-linux's `unshare` and
`nsenter` too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from labkit import system
from labkit.config import parse_rate
from labkit.errors import ConfigError

PREFIX = "labkit-"  # every namespace this module makes: labkit-<pid>-<job>-hub / -n<k>
SUBNET = "10.213.0"  # inside the job's own namespaces only (a private range no route reaches)
RDZV_PORT = 29400
MAX_NODES = 9  # c10d orders nodes by address as text: 10.213.0.1 … .9 stay in node order
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # bits of a capability set (linux/capability.h)
ROOT, USERNS, NONE = "root", "user namespaces", "none"
SYSCTL = Path("/proc/sys")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding labkit/: the holders import from it

# A namespace's holder: it dies with the launching process (SIGKILL, even when that is killed
# outright), says it is ready, and waits until the job closes its stdin. argv: the launching process's pid, name.
HOLD = ("import signal, sys\n"
        "from labkit.jobs.processes import die_with_parent\n"
        "die_with_parent(int(sys.argv[1]), signal.SIGKILL)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n")
# A node's holder first gives the node a /sys of its own network namespace (what `ip netns exec`
# does as root): the link meter reads the node's eth0 counters there (labkit.training.links). Where
# a fresh sysfs cannot be mounted, an empty /sys/class/net hides the host's interfaces: the
# counters are then absent rather than another interface's.
NODE_SYS = ('mount -t sysfs sysfs /sys 2>/dev/null || mount -t tmpfs tmpfs /sys/class/net '
            '|| { echo "cannot give the node its own /sys/class/net" >&2; exit 1; }; exec "$@"')


def effective_capabilities(status: str | None = None) -> int:
    """This process's effective capability set (CapEff in /proc/self/status), as bits."""
    try:
        status = Path("/proc/self/status").read_text() if status is None else status
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        return 0


def has_admin_capabilities(capabilities: int | None = None) -> bool:
    """CAP_NET_ADMIN (links, qdiscs) and CAP_SYS_ADMIN (`ip netns add` mounts /run/netns/NAME),
    asked of the capability set, not the uid: root in a container may lack them, and a capsh'd
    shell does."""
    caps = effective_capabilities() if capabilities is None else capabilities
    return all(caps >> bit & 1 for bit in (CAP_NET_ADMIN, CAP_SYS_ADMIN))


def userns_probe() -> str | None:
    """None if an unprivileged user + network namespace can be made here (tried once: `unshare
    --user --map-root-user --net true`), else the kernel's answer."""
    try:
        proc = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]


def userns_forbidden(answer: str) -> str:
    """One line: the kernel refuses unprivileged user namespaces, which switch does, and how to allow it."""
    def read(name):
        try:
            return (SYSCTL / name).read_text().strip()
        except OSError:
            return None

    if read("kernel/apparmor_restrict_unprivileged_userns") == "1":  # Ubuntu 23.10 and later
        how = "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
    elif read("kernel/unprivileged_userns_clone") == "0":  # Debian's and Arch's older kernels
        how = "`sudo sysctl -w kernel.unprivileged_userns_clone=1`"
    elif read("user/max_user_namespaces") == "0":
        how = "`sudo sysctl -w user.max_user_namespaces=15000`"
    else:
        how = "the administrator's help (a sysctl or security policy forbids them)"
    return (f"the emulated cluster needs root or unprivileged user namespaces, and this kernel forbids the "
            f"latter ({answer}): allow them with {how}, or run as root")


def detect_mode(capabilities: int | None = None, probe=userns_probe, which=shutil.which) -> tuple[str, str]:
    """(mode, why): how this machine can make an emulated cluster — ROOT, USERNS or NONE — and why
    in words. Reads sys.platform now (tests fake it)."""
    if not system.is_linux():
        return NONE, (f"the emulated cluster needs Linux network namespaces, which {system.name()} does not "
                      f"have: notebook 07 shows its stored reference run")
    if not (which("ip") and which("tc")):
        return NONE, "the emulated cluster needs iproute2's `ip` and `tc` (apt-get install iproute2)"
    if has_admin_capabilities(capabilities):
        return ROOT, "CAP_NET_ADMIN and CAP_SYS_ADMIN: named network namespaces (ip netns)"
    if not (which("unshare") and which("nsenter")):
        return NONE, ("the emulated cluster needs CAP_NET_ADMIN (root), or util-linux's `unshare` and "
                      "`nsenter` for user namespaces (apt-get install util-linux)")
    answer = probe()
    if answer is not None:
        return NONE, userns_forbidden(answer)
    return USERNS, "no CAP_NET_ADMIN: each job in an unprivileged user namespace of its own"


@functools.lru_cache(maxsize=1)
def mode() -> tuple[str, str]:
    """detect_mode() for this process, asked once (the probe starts a process)."""
    return detect_mode()


def missing_capability() -> str | None:
    """Why this machine cannot emulate nodes, in one line, or None."""
    how, why = mode()
    return why if how == NONE else None


def mode_line() -> str:
    """`labkit machine`'s row: which way this machine makes an emulated cluster."""
    how, why = mode()
    return f"{how} — {why}"


def sh(*args: str) -> None:
    """One ip/tc command; its error message, if any, in one line."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def namespaces() -> list[str]:
    """Every emulated node's namespace on this machine: named ones (root's) and the holders of
    user-namespace jobs (by the name on their command line)."""
    return named_namespaces() + [name for name, _ in holders()]


def named_namespaces() -> list[str]:
    if not shutil.which("ip"):
        return []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def holders() -> list[tuple[str, psutil.Process]]:
    """(name, process) of every live namespace holder."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if HOLD in cmdline and cmdline[-1].startswith(PREFIX):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append((cmdline[-1], proc))
            except psutil.NoSuchProcess:
                pass
    return found


def remove_stale() -> list[str]:
    """Remove the named namespaces of jobs whose launching process is gone (killed outright).
    A user-namespace job leaves nothing to remove: its holders die with the launching process."""
    stale = [ns for ns in named_namespaces() if not _alive(int(ns.split("-")[1]))]
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
    """The namespaces, veth links, bridge and qdiscs of one emulated job, made as root."""

    def __init__(self, nodes: int, link: str, tag: str):
        self.nodes, self.link = nodes, link
        self.hub = f"{PREFIX}{os.getpid()}-{tag}-hub"
        self.node_ns = [f"{PREFIX}{os.getpid()}-{tag}-n{k}" for k in range(nodes)]

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def enter(self, where: str, cwd=None) -> list[str]:
        """The command prefix that runs a command inside namespace `where` (the hub or a node):
        `ip netns exec` execs it, so it stays the same process, with a /sys of that namespace."""
        return ["ip", "netns", "exec", where]

    def _make(self) -> None:
        sh("ip", "netns", "add", self.hub)
        for ns in self.node_ns:
            sh("ip", "netns", "add", ns)

    def create(self) -> "Network":
        try:
            self._make()
            hub = self.enter(self.hub)
            sh(*hub, "ip", "link", "add", "br0", "type", "bridge")
            sh(*hub, "ip", "link", "set", "br0", "up")
            for k, ns in enumerate(self.node_ns):
                node = self.enter(ns)
                sh(*node, "ip", "link", "set", "lo", "up")  # traffic inside a node: loopback, unshaped
                sh(*hub, "ip", "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0",
                   "netns", self.netns_handle(k))
                sh(*hub, "ip", "link", "set", f"v{k}", "master", "br0", "up")
                sh(*node, "ip", "addr", "add", f"{self.address(k)}/24", "dev", "eth0")
                sh(*node, "ip", "link", "set", "eth0", "up")
                if self.link:  # the node's card: out of it (eth0) and into it (the bridge's port v<k>)
                    self.shape(node, "eth0")
                    self.shape(hub, f"v{k}")
        except BaseException:
            self.remove()
            raise
        return self

    def netns_handle(self, node: int) -> str:
        """How `ip link ... netns X` names node `node`'s namespace: its name here."""
        return self.node_ns[node]

    def shape(self, enter: list[str], device: str) -> None:
        rate = parse_rate(self.link)
        # tbf's bucket: what may pass at once, at full speed, after a quiet moment. Kept to ~4 ms of
        # traffic (two full-size packets at least): a bigger one would let each step's first burst
        # through unshaped (a 64 KB bucket halved a 125 KB step's time at 5 Mbit/s). latency bounds
        # the queue (past it, tbf drops and TCP slows down).
        burst = max(int(rate / 8 / 250), 2 * 1514)
        sh(*enter, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{int(rate)}bit",
           "burst", str(burst), "latency", "100ms")

    def remove(self) -> None:
        """Delete every namespace (their veths and qdiscs go with them). Idempotent."""
        for ns in [*self.node_ns, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class UserNetwork(Network):
    """The same network, made without root's powers: inside a user namespace of the job's own
    (see the module's docstring). Each namespace lives as long as its holder process."""

    READY_TIMEOUT_S = 30.0

    def __init__(self, nodes: int, link: str, tag: str):
        super().__init__(nodes, link, tag)
        self.held: dict[str, subprocess.Popen] = {}

    def enter(self, where: str, cwd=None) -> list[str]:
        """nsenter into the holder's user and network namespaces (and a node's mount namespace,
        for its /sys). Joining a mount namespace moves the working directory to its root:
        `--wd` puts it back. As the namespace's owner we may join it; inside, we are its root."""
        prefix = ["nsenter", "-t", str(self.held[where].pid), "-U", "-n", "--preserve-credentials"]
        if where != self.hub:
            prefix += ["-m", f"--wd={Path(cwd or os.getcwd()).resolve()}"]
        return prefix

    def netns_handle(self, node: int) -> str:
        return str(self.held[self.node_ns[node]].pid)  # `netns PID`: that process's namespace

    def _make(self) -> None:
        hold = [sys.executable, "-c", HOLD, str(os.getpid())]
        self._hold(self.hub, ["unshare", "--user", "--map-root-user", "--net", "--", *hold, self.hub])
        user = ["nsenter", "-t", str(self.held[self.hub].pid), "-U", "--preserve-credentials"]
        for ns in self.node_ns:  # made inside the job's user namespace: it owns them
            self._hold(ns, [*user, "unshare", "--net", "--mount", "--propagation", "private", "--",
                            "sh", "-c", NODE_SYS, "sh", *hold, ns])

    def _hold(self, name: str, cmd: list[str]) -> None:
        """Start a holder and wait until it says it is ready (its namespaces exist)."""
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": path}, start_new_session=True)
        self.held[name] = proc
        ready, _, _ = select.select([proc.stdout], [], [], self.READY_TIMEOUT_S)
        if not ready or proc.stdout.readline().strip() != b"ready":
            proc.kill()
            error = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"{' '.join(cmd[:8])} …: {error[-1] if error else 'no answer'}")

    def remove(self) -> None:
        """End every holder: the kernel then frees their namespaces, veths and qdiscs (once the
        agents inside, stopped before this, have ended). Idempotent."""
        for proc in self.held.values():
            if proc.poll() is None:
                try:
                    proc.stdin.close()  # the holder's read ends: it exits
                except OSError:
                    pass
        deadline = time.time() + 5
        for proc in self.held.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()


class EmulatedCluster:
    """A started emulated job: one torchrun agent per node namespace, each a `ProcessTree`
    (labkit.jobs.command) in `handles`; the same face as one (pid, returncode, poll, wait, stop, kill,
    leftovers, close, failure: what labkit.jobs.job.StartedProcesses names)."""

    FAILED_PEER_GRACE_S = 30.0  # after one node failed, the others get this long to notice

    def __init__(self, command, nodes: int, link: str):
        from labkit.jobs.command import start

        how, why = mode()
        if how == NONE:
            raise ConfigError(why)
        if nodes > MAX_NODES:
            raise ConfigError(f"at most {MAX_NODES} emulated nodes (got {nodes})")
        if how == ROOT:
            remove_stale()
        self.mode = how
        kind = Network if how == ROOT else UserNetwork
        self.network = kind(nodes, link, tag=f"{int(time.time() * 1000) % 100000:05d}").create()
        self.handles = []
        try:
            for k, ns in enumerate(self.network.node_ns):
                self.handles.append(start(dataclasses.replace(
                    command, nnodes=nodes, node_rank=k, enter=tuple(self.network.enter(ns, command.cwd)),
                    rdzv_endpoint=f"{self.network.address(0)}:{RDZV_PORT}",
                    local_addr=self.network.address(k), rdzv_conf=f"is_host={int(k == 0)}",
                    log_dir=Path(command.logs) / f"node-{k}", queue_lock=command.queue_lock if k == 0 else None,
                    env={**command.env, "GLOO_SOCKET_IFNAME": "eth0"})))
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
