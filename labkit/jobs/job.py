"""Job: one training run as a background `torchrun` (or one plain process, for a method without a
process group), with progress, logs and teardown.

    job = Job(cfg).start()      # returns at once
    job.progress()              # {'epoch', 'step', 'total_steps', 'loss', 'img_s'}
    job.wait()                  # prints progress until the run ends
    job.result()                # the parsed result.json (raises RunFailed on failure)

The run folder (cfg.out_dir) holds config.json, progress.jsonl (rank 0, a line a
step), result.json, checkpoint.pt and logs/ (torchrun's per-rank logs and error
files). labkit.jobs.command starts it (the agent, which becomes torchrun, in a process
group of its own: a `ProcessTree`; on emulated nodes an `EmulatedCluster` of them, one per node);
stopping a job is that tree's stop: SIGTERM, wait, kill what is left, and once torchrun has
exited, whatever is left of its group.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Protocol

import psutil

from labkit.config import LAB_ROOT, ConfigError, RunConfig, results_root
from labkit.files import write_json
from labkit.jobs.failures import collective_story, describe_failure
from labkit import run_folder as folder
from labkit.jobs.command import Command, Prestarted, start


class RunFailed(RuntimeError):
    """The run did not end ok; the message names the failing rank and its traceback."""


class StillRunning(TimeoutError):
    """wait(timeout=...) ran out; the run itself goes on."""


STARTUP_GRACE_S = 300.0  # before a rank's first step, the watchdog waits this long more
# Every rank touches logs/alive-RANK each second from a thread of its own (training/heartbeat.py),
# whatever its step does: a rank waiting in a collective still touches it, a stopped (SIGSTOP)
# or wedged one does not. One silent this long while another touched its file within
# ALIVE_FRESH_S is named and the job stopped — long before a collective's timeout blames the
# healthy rank that waited for it.
SILENT_RANK_S = 20.0
ALIVE_FRESH_S = 5.0


class StartedProcesses(Protocol):
    """What a started Job holds (`Job.handle`) and asks of it: a `ProcessTree` (labkit.jobs.command)
    or an `EmulatedCluster` of them, one per node (labkit.jobs.cluster)."""

    started: float  # time.time() at the start

    @property
    def pid(self) -> int: ...  # the root process (on emulated nodes, node 0's)
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def stop(self, grace_s: float = 10.0) -> list[str]: ...
    def leftovers(self) -> list[str]: ...
    def close(self) -> None: ...
    def failure(self) -> dict | None: ...


def worker_command(cfg: RunConfig, config_path: Path) -> Command:
    """The run as a Command: the training worker on this config. The ranks are forked from
    torchrun's forkserver, which has imported torch, torchvision and the worker once: four fresh
    interpreters would each import them, ~7 s of CPU apiece, ~15 s a job on 2 cores. GPU jobs
    take turns on one lock (CPU jobs share the cores and never wait)."""
    lock = results_root() / ".cuda.lock" if cfg.device == "cuda" else None  # CPU jobs never wait
    if lock is not None:
        lock.parent.mkdir(parents=True, exist_ok=True)
    from labkit import hardware

    out = Path(cfg.out_dir)
    ranks_here = cfg.nproc if cfg.emulated else cfg.ranks_per_node  # emulated nodes share this machine's cores
    # OMP_WAIT_POLICY=PASSIVE: an OpenMP thread that waits for its team sleeps instead of spinning.
    # A spinning team collapses when any other process takes one of the cores (single, 2 threads on
    # 2 cores, beside one busy loop: 16 img/s spinning, 89 passive; 115 and 111 with no load).
    env = {"OMP_NUM_THREADS": str(hardware.cpu_threads_per_rank(ranks_here)), "OMP_WAIT_POLICY": "PASSIVE"}
    if not cfg.torchrun:  # torchrun sets this for its workers; a plain process needs it set
        (out / "logs" / "0").mkdir(parents=True, exist_ok=True)
        env["TORCHELASTIC_ERROR_FILE"] = str(out / "logs" / "0" / "error.json")
    command = Command("labkit.training.worker", [str(config_path)], nproc=cfg.ranks_per_node, run_dir=out,
                      log_dir=out / "logs", log_name="launcher.log", rank_logs=True, run_id=cfg.name,
                      max_restarts=cfg.max_restarts, torchrun=cfg.torchrun, queue_lock=lock,
                      started_file=out / "started", env=env, cwd=LAB_ROOT)
    if cfg.nodes > 1 and not cfg.emulated:  # a real node: torchrun's c10d rendezvous on node 0
        command = dataclasses.replace(command, nnodes=cfg.nodes, node_rank=cfg.node_rank,
                                      rdzv_endpoint=cfg.rdzv_endpoint, local_addr=interface_address(cfg.interface),
                                      # node 0 hosts the rendezvous store; said outright, since torch's guess
                                      # (does the endpoint name this machine?) is yes for every node on one machine
                                      rdzv_conf=f"is_host={int(cfg.node_rank == 0)}",
                                      log_dir=out / "logs" / f"node-{cfg.node_rank}",  # each node its own logs
                                      env={**env, **interface_env(cfg.interface)})
    return command


def prestart(profile: str, overrides: dict) -> Prestarted | None:
    """Start the job's torchrun now, held at its gate (labkit.jobs.command.Prestarted), from what
    is known before torch is imported: the values given and the profile's. `make_config` then
    checks the run (its method's file imports torch) while torchrun and its forkserver import
    theirs, and `Job(cfg).start(prestarted)` lets it go on, or starts afresh when the config turned
    out to need another command. None where the guess is unlikely to hold or prestarting cannot
    help: a method of one plain process (no torchrun), a method from a file, several nodes, a
    resumed run, a GPU run (it queues for the GPUs), an `auto` profile torch must decide.
    Every refusal of the values given comes from here, in one line, as make_config's would."""
    from labkit.profiles import precheck
    from labkit.strategies import BASELINE, PLAIN_PROCESS, REGISTRY

    strategy = overrides.get("strategy") or BASELINE
    if strategy not in REGISTRY or strategy in PLAIN_PROCESS or "nnodes" in overrides:
        return None
    overrides["strategy"] = strategy  # as make_config sets it
    draft = precheck(profile, overrides)  # and the run's name, fixed in overrides
    if draft is None or draft.nodes > 1 or draft.device != "cpu" or draft.torchrun is False:
        return None
    out = Path(draft.out_dir or results_root() / "runs" / draft.name).expanduser().resolve()
    draft = dataclasses.replace(draft, out_dir=str(out))
    return Prestarted(worker_command(draft, out / "config.json"))


def interface_address(interface: str) -> str:
    """The IPv4 address of `interface` (the stores bind it, and only it), or the host name's."""
    import socket

    if not interface:
        return socket.gethostbyname(socket.gethostname())
    addresses = [a.address for a in psutil.net_if_addrs().get(interface, []) if a.family == socket.AF_INET]
    if not addresses:
        from labkit.errors import ConfigError

        raise ConfigError(f"interface '{interface}' has no IPv4 address here; choose one of "
                          f"{', '.join(sorted(psutil.net_if_addrs()))} (ip addr shows them)")
    return addresses[0]


def interface_env(interface: str) -> dict:
    return {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface} if interface else {}


class Job:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.handle: StartedProcesses | None = None
        self.lock: folder.FolderLock | None = None
        self.ended: dict | None = None  # how it ended, as this Job wrote it into result.json
        self._status = "queued"

    # -- starting --------------------------------------------------------------------
    def start(self, prestarted: Prestarted | None = None) -> "Job":
        """Claim the run folder (locked for the run's life; refused in one line when it holds
        anything but this run's own unfinished work), then start the job. Nothing is written
        before the claim, and a start that fails leaves the folder as it found it. `prestarted`
        (see `prestart`) becomes the job when it was started for this one, else it is cancelled."""
        from labkit.datasets.tiny import make_for

        created = not self.out.exists()
        try:
            self.lock = folder.FolderLock(self.out, self.cfg.node_rank).acquire()
        except BaseException:
            if prestarted is not None:
                prestarted.cancel()
            raise
        try:
            if self.cfg.resume:
                folder.check_resumable(self.out, locked=True)
            else:
                folder.check_new(self.out, **folder.run_of(self.cfg), locked=True)
            if self.cfg.emulated:  # whether this machine can make the nodes: said before anything is written
                from labkit.jobs.cluster import MAX_NODES, missing_capability

                why = missing_capability() or (f"at most {MAX_NODES} emulated nodes (got {self.cfg.nodes})"
                                               if self.cfg.nodes > MAX_NODES else None)
                if why:
                    raise ConfigError(why)
            make_for(self.cfg)  # the tiny set is generated on first need, here, before the ranks read it
            (self.out / "logs").mkdir(parents=True, exist_ok=True)
            for stale in [self.out / "started", *(self.out / "logs").glob("heartbeat-*"),
                          *(self.out / "logs").glob("alive-*")]:  # from a run resumed now
                stale.unlink(missing_ok=True)
            # Node 0's config is the run's; another node on the same disk keeps its own copy.
            config_path = self.out / ("config.json" if self.cfg.node_rank == 0 else f"config-node{self.cfg.node_rank}.json")
            self.cfg.save(config_path)  # on --resume: the run's own config, marked resumed (and its max_restarts)
            command = dataclasses.replace(worker_command(self.cfg, config_path), keep_fds=(self.lock.fd,))
            if self.cfg.emulated:  # one agent per node namespace (labkit.jobs.cluster)
                from labkit.jobs.cluster import EmulatedCluster

                self.handle = EmulatedCluster(command, self.cfg.nodes, self.cfg.link)
            else:
                self.handle, prestarted = start(command, prestarted), None
        except BaseException:
            if prestarted is not None:
                prestarted.cancel()
            if created:  # ours alone: nothing of a start that failed stays
                shutil.rmtree(self.out, ignore_errors=True)
            self.lock.release()
            raise
        self.started = self.handle.started
        self._status = "running"  # "queued" until the agent holds the device lock
        return self

    # -- looking at it ---------------------------------------------------------------
    @property
    def status(self) -> str:
        """queued / running / ok / failed / hung / interrupted — a pure read: it neither
        stops nor writes anything (`poll()` and `wait()` do the tidying up)."""
        if self._status == "running" and self.handle.poll() is not None:
            return self._ended_status() or "failed"
        if self._status == "running" and not (self.out / "started").exists():
            return "queued"
        return self._status

    def poll(self) -> str:
        """Look at the job once; if its agent has exited, stop stragglers and make sure
        result.json says how it ended. Returns the status."""
        if self._status == "running" and self.handle.poll() is not None:
            self._finish()
        return self.status

    def _ended_status(self) -> str | None:
        """The status in this run's result.json, if this attempt wrote one."""
        path = self.out / "result.json"
        if path.exists() and path.stat().st_mtime >= self.started:
            return json.loads(path.read_text())["status"]
        return None

    def progress(self) -> dict:
        """The last progress line rank 0 wrote (empty before the first step)."""
        from .progress import last_progress

        return last_progress(self.out / "progress.jsonl")  # skips a half-written line, reads nan

    def tail(self, n: int = 20) -> list[str]:
        """The last n lines of launcher.log (torchrun's own output) and of every rank's log."""
        lines = []
        for path in sorted((self.out / "logs").rglob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-n:]
            lines += [f"[{path.relative_to(self.out / 'logs')}] {line}" for line in text]
        return lines[-n:] if n else lines

    def wait(self, progress: bool = True, timeout: float | None = None) -> str:
        """Block until the run ends, showing progress; Ctrl-C cancels the run. With a timeout,
        TimeoutError after that many seconds, and the run goes on (cancel() is cancel's job)."""
        from .progress import ProgressDisplay

        display = ProgressDisplay(self.cfg.name, timing_warmup_steps=self.cfg.timing_warmup_steps) if progress else None
        deadline = None if timeout is None else time.time() + timeout
        try:
            while self.poll() in ("queued", "running"):
                if display:
                    display.update(self.progress())
                stopped = self.stopped_rank()
                if stopped:
                    self._stop_hung(*stopped)
                elif self.stalled_s() > self.cfg.watchdog_s > 0:
                    self._stop_hung()
                if deadline and time.time() > deadline and self._status in ("queued", "running"):
                    raise StillRunning(f"run {self.cfg.name} still running after {timeout} s; it goes on "
                                       f"(job.cancel() stops it)")
                try:  # back the moment torchrun ends, not up to 0.5 s later; else look again in 0.5 s
                    self.handle.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
        except StillRunning:
            raise
        except BaseException:  # KeyboardInterrupt, SIGTERM (labkit run), a kernel interrupt, papermill's timeout
            self.cancel()
            raise
        finally:
            if display:
                display.close(self.progress(), self._status)
        return self._status

    def result(self) -> dict:
        if self.poll() in ("queued", "running"):
            self.wait(progress=False)
        result = self.read_result()
        if result["status"] != "ok":
            raise RunFailed(describe_failure(result))
        return result

    # -- the watchdog ------------------------------------------------------------------
    def stalled_s(self) -> float:
        """Seconds since any rank last showed life (its heartbeat file), or since start."""
        started = self.out / "started"
        if not started.exists():
            return 0.0  # still queued
        beats = [p.stat().st_mtime for p in (self.out / "logs").glob("heartbeat-*")]
        if not beats:  # still starting: imports, rendezvous, scanning a dataset can be slow
            return time.time() - started.stat().st_mtime - max(self.cfg.watchdog_s, STARTUP_GRACE_S)
        return time.time() - max(beats)

    def last_steps(self) -> dict[int, int]:
        """The step each rank was working on, from its heartbeat file."""
        steps = {}
        for path in (self.out / "logs").glob("heartbeat-*"):
            text = path.read_text().strip()
            steps[int(path.name.split("-")[1])] = int(text) if text else 0
        return dict(sorted(steps.items()))

    def stopped_rank(self) -> tuple[int, str] | None:
        """(rank, why) of a rank that has stopped showing life while the others still do."""
        now, alive = time.time(), {}
        for path in (self.out / "logs").glob("alive-*"):
            try:
                alive[int(path.name.split("-")[1])] = (now - path.stat().st_mtime, int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):  # being written, or gone with a resume
                continue
        if len(alive) < 2 or min(age for age, _ in alive.values()) > ALIVE_FRESH_S:
            return None  # nobody to compare with, or nobody moves (the machine paused; the job ends)
        rank, (age, pid) = max(alive.items(), key=lambda item: item[1][0])
        if age < SILENT_RANK_S:
            return None
        try:
            state = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return None  # it exited: torchrun reports that itself
        if state == psutil.STATUS_ZOMBIE:
            return None
        how = "stopped (SIGSTOP, or a debugger holds it)" if state == psutil.STATUS_STOPPED else f"{state}, not responding"
        return rank, (f"rank {rank} (pid {pid}) stopped showing life {age:.0f} s ago while the other ranks were "
                      f"alive and waiting for it: its process was {how}")

    def _stop_hung(self, rank: int | None = None, why: str = "") -> None:
        steps = self.last_steps()
        self._stop()
        stuck = rank if rank is not None else (min(steps, key=steps.get) if steps else None)
        why = why or f"no progress on any rank for {self.cfg.watchdog_s:.0f} s (watchdog_s)"
        self._finish(status="hung", failure={
            "rank": stuck, "exception": f"{why}; step each rank was on: {steps}", "traceback": "",
            "last_step_by_rank": steps})

    # -- stopping ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job and every process under it; record it as interrupted — unless it had
        already ended by itself, whether or not anyone looked: its own result stands."""
        if self.handle is None or self._status not in ("running", "queued"):
            return
        if self.handle.poll() is not None:  # it ended before the cancel: keep how it ended
            self._finish()
            return
        self._stop()
        self._finish(status="interrupted")

    def _stop(self) -> None:
        self.handle.stop()  # SIGTERM: torchrun stops its ranks; then SIGKILL what remains

    def _finish(self, status: str | None = None, failure: dict | None = None) -> None:
        """Called once the agent has exited: make sure result.json says how it ended, then let go
        of the folder. A result the run wrote itself is never overwritten (ok stays ok)."""
        self.handle.leftovers()  # nothing should be left: ranks die with torchrun; if so, logged
        try:
            self._record_end(status, failure)
        finally:
            self.handle.close()
            self.lock.release()

    def _record_end(self, status: str | None, failure: dict | None) -> None:
        if self._ended_status():
            self._status = self._ended_status()
            return
        if status is None and self.cfg.nodes > 1 and not self.cfg.emulated and self.handle.returncode == 0:
            self._status = "ok"  # this node's ranks finished; rank 0 wrote the run's result (on node 0)
            return
        self._status = status or "failed"
        failure = failure or self.handle.failure()
        story = collective_story(self.out / "logs")  # which collective each rank was in (failures.py)
        if failure is not None and story:
            failure["collectives"] = story
        self.ended = {"schema": 1, "name": self.cfg.name, "strategy": self.cfg.strategy_name, "status": self._status,
                      "config": self.cfg.to_dict(), "exit_code": self.handle.returncode, "failure": failure}
        try:
            write_json(self.out / "result.json", self.ended)
        except OSError as error:  # a full disk: the last good result.json stays; the status is said here
            self.ended["failure"] = {**(self.ended["failure"] or {}), "exception": f"result.json not written: {error}"}

    def read_result(self) -> dict:
        """The run's result.json, or, where it could not be written (a full disk), how it ended."""
        path = self.out / "result.json"
        if self.ended is not None and (not path.exists() or path.stat().st_mtime < self.started):
            return self.ended
        return json.loads(path.read_text())

    def processes(self) -> list[psutil.Process]:
        """This job's live processes (the agent, torchrun, its forkserver, the ranks): every
        one carries LABKIT_RUN_DIR, since a forked rank's command line is the forkserver's."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("LABKIT_RUN_DIR") == str(self.out):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found
