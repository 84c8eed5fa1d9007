"""The one place that builds torchrun's command line and starts it: labkit runs, the student
check, the primer's ranks and the benchmarks all describe what to run as a `Command` and `start`
it, which returns the `ProcessTree` it started (torchrun, or one plain process, and every process
under it).

    tree = start(Command("labkit.training.worker", [config], nproc=4, run_dir=out))
    tree.wait(); tree.failure()          # None, or {rank, exit_code, signal, error_file, exception, traceback}
    tree.stop()                          # or kill(): nothing of the job is left afterwards

What every job gets, whoever starts it:
- **Loopback on one node.** The rendezvous store, the ranks' store and gloo/NCCL's sockets
  bind 127.0.0.1 only (labkit.jobs.torchrun). On several nodes the same fields name the
  rendezvous endpoint and this node's address on the chosen interface instead (real nodes:
  labkit.jobs.job; nodes emulated in network namespaces: labkit.jobs.cluster).
- **Ranks forked from a forkserver** that imported the program (torch, torchvision) once,
  each rank dying with it, and it with torchrun (the PDEATHSIG chain: labkit.jobs.rank).
- **Structured failures.** torchrun here runs through torch's own launcher API
  (`elastic_launch`); its `ChildFailedError.failures` are written to failures.json beside
  the log, and labkit.jobs.failures reads them with each rank's error file.
- **A process group of its own** (the operating system's, by start_new_session; not a
  torch.distributed group): stopping the job stops all of it, and whatever outlived torchrun is
  killed and named (`leftovers`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.jobs import processes

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding labkit/: ranks import from it
RANK_SCRIPT = Path(__file__).resolve().with_name("rank.py")  # torchrun's --run-path for forked ranks
AGENT_SCRIPT = Path(__file__).resolve().with_name("agent.py")  # waits for a lock, then becomes the command


# The module every torchrun of the lab runs (torch.distributed.run, behind labkit's own checks);
# bench/startup.py looks for it among a run's processes.
TORCHRUN_MODULE = "labkit.jobs.torchrun"


@dataclass
class Command:
    """What to run: `program` (a module, or a script ending in .py) on `nproc` ranks per node under
    torchrun, or as one plain process (`torchrun=False`)."""

    program: str
    args: list[str] = field(default_factory=list)
    nproc: int = 1
    run_dir: Path = Path(".")       # every process carries it (LABKIT_RUN_DIR)
    log_dir: Path | None = None     # torchrun's log and failures.json (default: run_dir)
    log_name: str = "torchrun.log"  # torchrun's own output, in log_dir
    rank_logs: bool = False         # one log folder per rank under log_dir (torchrun's --log-dir)
    run_id: str = "labkit"
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = "127.0.0.1:0"  # one node: loopback, any free port
    local_addr: str = "127.0.0.1"       # the address this node's stores and sockets bind
    rdzv_conf: str = ""                 # torchrun's --rdzv-conf (e.g. is_host=1: this node hosts the store)
    max_restarts: int = 0
    monitor_interval_s: float | None = None  # torchrun's default (0.1 s) when None
    fork_ranks: bool = True         # False: each rank a fresh interpreter (a script; the primer)
    torchrun: bool = True           # False: one plain process (a method that needs no process group)
    queue_lock: Path | None = None  # wait for this lock before starting (GPU jobs take turns)
    started_file: Path | None = None  # touched once the job holds its queue lock (if any) and starts
    keep_fds: tuple[int, ...] = ()  # open files the job inherits and holds till it ends (its run folder's lock)
    enter: tuple[str, ...] = ()     # a command that execs ours inside an emulated node's namespaces (labkit.jobs.cluster)
    env: dict = field(default_factory=dict)
    cwd: Path | None = None

    @property
    def logs(self) -> Path:
        return Path(self.log_dir or self.run_dir)

    @property
    def log_path(self) -> Path:
        return self.logs / self.log_name

    @property
    def failures_path(self) -> Path:
        return self.log_path.with_name("failures.json")


def command_line(command: Command) -> list[str]:
    """The command line that runs `command` (what `start` executes)."""
    program = [command.program] if command.program.endswith(".py") else ["-m", command.program]
    if not command.torchrun:
        argv = [sys.executable, *program, *command.args]
    else:
        argv = [sys.executable, "-m", TORCHRUN_MODULE, f"--nnodes={command.nnodes}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={command.rdzv_endpoint}",
                f"--local-addr={command.local_addr}", f"--rdzv-id={command.run_id}",
                f"--nproc-per-node={command.nproc}", f"--max-restarts={command.max_restarts}"]
        if command.nnodes > 1:
            argv.append(f"--node-rank={command.node_rank}")
        if command.rdzv_conf:
            argv.append(f"--rdzv-conf={command.rdzv_conf}")
        if command.monitor_interval_s is not None:
            argv.append(f"--monitor-interval={command.monitor_interval_s}")
        if command.rank_logs:
            argv += [f"--log-dir={command.logs}", "--redirects=3"]
        if command.fork_ranks:  # rank.py runs the module afresh in each forked rank (labkit.jobs.torchrun)
            argv += ["--start-method=forkserver", "--run-path", str(RANK_SCRIPT), command.program]
        elif command.program.endswith(".py"):
            argv.append(command.program)
        else:  # a fresh interpreter per rank, still dying with torchrun
            argv += ["-m", "labkit.jobs.rank", command.program]
        argv += command.args
    if command.queue_lock is not None or command.started_file is not None:
        argv = [sys.executable, str(AGENT_SCRIPT), str(os.getpid()), str(command.queue_lock or "-"),
                str(command.started_file or "-"), "--", *argv]
    if command.enter:  # `ip netns exec NS` or `nsenter ...` execs the command: the same process, in the node
        argv = [*command.enter, *argv]
    return argv


SOCKET_PATH_SPARE = 40  # what multiprocessing adds under TMPDIR for its listener: pymp-XXXXXXXX/listener-XXXXXXXX


def job_temp_dir() -> str | None:
    """A temporary folder of the job's own (removed when it ends), for torch's error files and log
    folders (torchelastic_*) and multiprocessing's listeners (pymp-*) — unless its path would be
    too long for a Unix socket's address (104 bytes on macOS, 108 on Linux): then the job uses
    the system's, as it would without labkit."""
    folder = tempfile.mkdtemp(prefix="labkit-job-")
    if len(folder.encode()) + SOCKET_PATH_SPARE > 100:
        os.rmdir(folder)
        return None
    return folder


def environment(command: Command, tmp_dir: str | None) -> dict:
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **command.env,
            **({"TMPDIR": tmp_dir} if tmp_dir else {}),
            "LABKIT_RUN_DIR": str(command.run_dir),  # how a job's forked ranks are found (ps shows the forkserver)
            "LABKIT_FAILURES": str(command.failures_path),
            "LABKIT_LAUNCHER_PID": str(os.getpid())}  # torchrun dies with us (labkit.jobs.torchrun)


class Prestarted:
    """torchrun and its forkserver, started before their job is certain: they import torch (and the
    forkserver torchvision and the program: the longest wait of a run's start) while the caller
    still checks the run's config, which needs torch too. On 2 cores the two imports run side by
    side instead of one after the other (docs/BENCHMARKS.md, "A short run's fixed cost").

    torchrun waits at a gate, its imports done, before its rendezvous (labkit.jobs.torchrun); it
    has written nothing anywhere. `ProcessTree(command, prestarted)` opens the gate, handing it the
    job's log and its run folder's lock, when `command` is the one it was started for; otherwise,
    and on `cancel()` (the config was refused), it is killed and leaves nothing behind. Only for a
    job without a queue lock: the agent that waits for one would hold the gate closed itself."""

    def __init__(self, command: Command):
        self.command = command
        self.tmp_dir = job_temp_dir()
        self.gate, theirs = socket.socketpair()
        env = {**environment(command, self.tmp_dir), "LABKIT_GATE_FD": str(theirs.fileno())}
        # Until the gate opens its output has no log to go to (nothing is printed there);
        # from then on torchrun writes into the job's log, the ranks into their own (rank_logs).
        self.proc = subprocess.Popen(command_line(dataclasses.replace(command, queue_lock=None, started_file=None)),
                                     cwd=command.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()

    def fits(self, command: Command) -> bool:
        """Started for this very job (its folder lock aside, which it is handed) and still waiting."""
        return self.proc.poll() is None and dataclasses.replace(command, keep_fds=()) == self.command

    def go(self, log, keep_fds: tuple[int, ...]) -> subprocess.Popen:
        """Open the gate: torchrun takes `log` as its stdout and stderr, and holds `keep_fds` till it ends."""
        socket.send_fds(self.gate, [b"go"], [log.fileno(), *keep_fds])
        self.gate.close()
        if self.command.started_file is not None:
            self.command.started_file.touch()  # what the agent does for a job started the usual way
        return self.proc

    def cancel(self) -> None:
        """The job will not run: torchrun and its forkserver are killed, their temporary folder removed."""
        self.gate.close()
        if self.proc.poll() is None:
            processes.kill_tree(self.proc.pid)
        self.proc.wait()
        processes.kill_group(self.proc.pid)
        if self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


class ProcessTree:
    """A started `Command`: its root process (torchrun, or the one plain process; behind the agent
    while that waits for the queue lock) and every process under it, in a session of its own.
    Wait for it, stop it, read how it failed."""

    def __init__(self, command: Command, prestarted: Prestarted | None = None):
        self.command = command
        command.logs.mkdir(parents=True, exist_ok=True)
        command.failures_path.unlink(missing_ok=True)  # from an earlier attempt in the same folder
        self.log = open(command.log_path, "ab")
        self.started = time.time()
        if prestarted is not None and prestarted.fits(command):
            self.tmp_dir, self.proc = prestarted.tmp_dir, prestarted.go(self.log, command.keep_fds)
            return
        if prestarted is not None:  # started for another job than this one
            prestarted.cancel()
        self.tmp_dir = job_temp_dir()
        self.proc = subprocess.Popen(command_line(command), cwd=command.cwd, env=environment(command, self.tmp_dir),
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     pass_fds=command.keep_fds,
                                     start_new_session=True)  # Ctrl-C in a terminal reaches us, not torchrun

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; on a timeout (subprocess.TimeoutExpired) the job goes on."""
        return self.proc.wait(timeout)

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """SIGTERM the root (torchrun stops its ranks), SIGKILL what remains; returns leftovers()."""
        processes.stop_tree(self.pid, grace_s)
        self.proc.wait()
        return self.leftovers()

    def kill(self) -> list[str]:
        """SIGKILL the root and every process under it at once; returns leftovers()."""
        processes.kill_tree(self.pid)
        self.proc.wait()
        return self.leftovers()

    def leftovers(self) -> list[str]:
        """Once the root has exited: kill what is left of the job's process group, write each
        to the log and return them (ranks die with torchrun, so this should be empty)."""
        killed = processes.kill_group(self.pid)
        for line in killed:
            self.log.write(f"labkit: killed after torchrun had exited: {line}\n".encode())
        self.log.flush()
        return killed

    def close(self) -> None:
        """Once the job has ended: close its log and remove its temporary folder."""
        self.log.close()
        if self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def failure(self) -> dict | None:
        """The rank that brought the job down, or None (labkit.jobs.failures)."""
        from labkit.jobs.failures import read_failure

        return read_failure(self.command.logs, since=self.started)

    def output(self, chars: int = 3000) -> str:
        """The end of the log (torchrun's own lines and the ranks' unredirected output, or the plain
        process's output)."""
        if not self.log.closed:
            self.log.flush()
        return self.command.log_path.read_text(errors="replace")[-chars:]


def start(command: Command, prestarted: Prestarted | None = None) -> ProcessTree:
    """Start the command in the background (through `prestarted`, when it was started for this one)."""
    return ProcessTree(command, prestarted)


def run(command: Command, timeout_s: float | None = None) -> ProcessTree:
    """Start the command and wait for it; a failure (or a timeout) raises with the log's end.
    The job never outlives this call."""
    tree = start(command)
    try:
        tree.wait(timeout_s)
    finally:
        tree.kill()  # already ended, normally: then this only reaps what outlived torchrun
        tree.close()
    if tree.returncode != 0:
        raise RuntimeError(f"{command.program} on {command.nproc} rank(s) failed (exit code {tree.returncode}):\n"
                           f"{tree.output()}")
    return tree
