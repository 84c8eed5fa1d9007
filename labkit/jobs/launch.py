"""Job: one training run as a background `torchrun`, with progress, logs and teardown.

    job = Job(cfg).start()      # returns at once
    job.progress()              # {'epoch', 'step', 'total_steps', 'loss', 'img_s'}
    job.wait()                  # prints progress until the run ends
    job.result()                # the parsed result.json (raises RunFailed on failure)

The run folder (cfg.out_dir) holds config.json, progress.jsonl (rank 0, a line a
step), result.json, checkpoint.pt and logs/ (torchrun's per-rank logs and error
files). The agent starts a process group of its own, and torchrun (which it becomes), its
forkserver, the ranks and their loader workers all stay in it. Stopping a job means: note
every descendant, SIGTERM the agent, wait, then kill what is left; once torchrun has exited,
whatever is left of its group is killed too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from labkit import hardware
from labkit.config import LAB_ROOT, RunConfig, results_root
from labkit.files import write_json
from labkit.jobs.failures import describe_failure, read_failure

FINAL = ("ok", "failed", "hung", "interrupted")


class RunFailed(RuntimeError):
    """The run did not end ok; the message names the failing rank and its traceback."""


RANK_SCRIPT = Path(__file__).resolve().with_name("rank.py")  # torchrun's --run-path for its ranks
STARTUP_GRACE_S = 300.0  # before a rank's first step, the watchdog waits this long more


def torchrun_command(cfg: RunConfig, config_path: Path) -> list[str]:
    if not cfg.torchrun:  # a method that needs no process group: one plain process
        return [sys.executable, "-m", "labkit.training.worker", str(config_path)]
    from .torchrun import single_node_command  # one node: every store and socket on loopback only

    command = [*single_node_command(cfg.nproc, cfg.name), f"--max-restarts={cfg.max_restarts}",
               f"--log-dir={Path(cfg.out_dir) / 'logs'}", "--redirects=3"]
    # The ranks are forked from torchrun's forkserver (`--run-path` + `--start-method=forkserver`),
    # which has imported torch, torchvision and the worker once (labkit.jobs.torchrun.start_forkserver):
    # four fresh interpreters would each import them, ~7 s of CPU apiece, ~15 s a job on 2 cores.
    return [*command, "--start-method=forkserver", "--run-path", str(RANK_SCRIPT),
            "labkit.training.worker", str(config_path)]  # ranks die with torchrun (rank.py)


def queued_command(cfg: RunConfig, config_path: Path) -> list[str]:
    """Wrap the command in labkit.agent: GPU jobs take turns on a lock (CPU jobs share
    the cores, so each has a lock of its own and never waits)."""
    lock = results_root() / (".cuda.lock" if cfg.device == "cuda" else f".cpu-{cfg.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    return [sys.executable, str(Path(__file__).with_name("agent.py")), str(os.getpid()), str(lock),
            str(Path(cfg.out_dir) / "started"), "--", *torchrun_command(cfg, config_path)]


class Job:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.proc: subprocess.Popen | None = None
        self._status = "queued"

    # -- starting --------------------------------------------------------------------
    def start(self) -> "Job":
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        for stale in [self.out / "started", *(self.out / "logs").glob("heartbeat-*")]:  # from a run resumed now
            stale.unlink(missing_ok=True)
        config_path = self.out / "config.json"
        self.cfg.save(config_path)
        env = dict(os.environ, PYTHONUNBUFFERED="1", LABKIT_RUN_DIR=str(self.out),  # see processes_of
                   OMP_NUM_THREADS=str(hardware.cpu_threads_per_rank(self.cfg.nproc)))
        if not self.cfg.torchrun:  # torchrun sets this for its workers; a plain process needs it set
            (self.out / "logs" / "0").mkdir(exist_ok=True)
            env["TORCHELASTIC_ERROR_FILE"] = str(self.out / "logs" / "0" / "error.json")
        self.log = open(self.out / "logs" / "launcher.log", "ab")
        self.started = time.time()
        self.proc = subprocess.Popen(queued_command(self.cfg, config_path), cwd=LAB_ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # Ctrl-C in a terminal reaches us, not torchrun
        self._status = "running"  # "queued" until the agent holds the device lock
        return self

    # -- looking at it ---------------------------------------------------------------
    @property
    def status(self) -> str:
        """queued / running / ok / failed / hung / interrupted — a pure read: it neither
        stops nor writes anything (`poll()` and `wait()` do the tidying up)."""
        if self._status == "running" and self.proc.poll() is not None:
            return self._ended_status() or "failed"
        if self._status == "running" and not (self.out / "started").exists():
            return "queued"
        return self._status

    def poll(self) -> str:
        """Look at the job once; if its agent has exited, stop stragglers and make sure
        result.json says how it ended. Returns the status."""
        if self._status == "running" and self.proc.poll() is not None:
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
        """The last n lines of the launcher's and every rank's log."""
        lines = []
        for path in sorted((self.out / "logs").rglob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-n:]
            lines += [f"[{path.relative_to(self.out / 'logs')}] {line}" for line in text]
        return lines[-n:] if n else lines

    def wait(self, progress: bool = True, timeout: float | None = None) -> str:
        """Block until the run ends, showing progress; Ctrl-C cancels the run."""
        from .progress import ProgressDisplay

        display = ProgressDisplay(self.cfg.name) if progress else None
        deadline = None if timeout is None else time.time() + timeout
        try:
            while self.poll() in ("queued", "running"):
                if display:
                    display.update(self.progress())
                if self.stalled_s() > self.cfg.watchdog_s > 0:
                    self._stop_hung()
                if deadline and time.time() > deadline:
                    raise TimeoutError(f"run {self.cfg.name} still running after {timeout} s")
                time.sleep(0.5)
        except BaseException:  # KeyboardInterrupt, a kernel interrupt, papermill's timeout
            self.cancel()
            raise
        finally:
            if display:
                display.close(self.progress(), self._status)
        return self._status

    def result(self) -> dict:
        if self.poll() in ("queued", "running"):
            self.wait(progress=False)
        result = json.loads((self.out / "result.json").read_text())
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

    def _stop_hung(self) -> None:
        steps = self.last_steps()
        stop_process_tree(self.proc.pid)
        self.proc.wait()
        stuck = min(steps, key=steps.get) if steps else None
        self._finish(status="hung", failure={
            "rank": stuck, "exception": f"no progress on any rank for {self.cfg.watchdog_s:.0f} s (watchdog_s); "
            f"step each rank was on: {steps}", "traceback": "", "last_step_by_rank": steps})

    # -- stopping ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job and every process under it; record it as interrupted."""
        if self.proc is None or self._status not in ("running", "queued"):
            return
        stop_process_tree(self.proc.pid)
        self.proc.wait()
        self._finish(status="interrupted")

    def _finish(self, status: str | None = None, failure: dict | None = None) -> None:
        """Called once the agent has exited: make sure result.json says how it ended."""
        # Nothing should be left: ranks die with torchrun. If something is, say so, then stop it.
        for straggler in stop_stragglers(self.proc.pid):
            self.log.write(f"labkit: killed after torchrun had exited: {straggler}\n".encode())
        self.log.close()
        path = self.out / "result.json"
        if status is None and self._ended_status():
            self._status = self._ended_status()
            return
        self._status = status or "failed"
        write_json(path, {"schema": 1, "name": self.cfg.name, "strategy": self.cfg.strategy_name,
                          "status": self._status, "config": self.cfg.to_dict(),
                          "exit_code": self.proc.returncode,
                          "failure": failure or read_failure(self.out / "logs", self.started)})


def processes_of(folder) -> list[psutil.Process]:
    """Every live process of the runs in `folder` (a run's folder or one above it): its command
    line names the folder (the agent, a check's torchrun), or its LABKIT_RUN_DIR does (every
    process a job starts; ranks forked from torchrun's forkserver show only that)."""
    folder = str(folder)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            run_dir = proc.environ().get("LABKIT_RUN_DIR", "")
            if run_dir == folder or run_dir.startswith(folder.rstrip(os.sep) + os.sep) or \
                    folder in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def stop_stragglers(group: int) -> list[str]:
    """After torchrun has exited, SIGKILL what is left of its process group `group` (the
    agent's pid: it started the group) and return what that was, but for the resource
    tracker (kill_all)."""
    members = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) == group and still_running(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    kill_all(members, timeout_s=5)
    commands = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in members]
    return [f"{pid} {command[:120]}" for pid, command in commands if RESOURCE_TRACKER not in command]


def stop_process_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM `pid` (torchrun forwards it to the workers), wait, SIGKILL survivors.
    Descendants are listed first: once the agent dies they are re-parented and lost."""
    try:
        root = psutil.Process(pid)
        family = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in family[:1]:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    kill_all(wait_ended(family, grace_s), timeout_s=5)


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant at once (no grace: nothing there to save), then wait for them to end."""
    try:
        family = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    kill_all(family, timeout_s=10)


def kill_all(procs: list, timeout_s: float) -> None:
    """SIGKILL each process (one already gone is fine), then wait until each has ended. A
    zombie has ended: an orphan's is reaped by init in its own time (here up to ~2 s later),
    and our own child (the agent) by its Popen. The multiprocessing resource tracker is
    spared until the others are gone: it then ends by itself and unlinks the semaphores they
    leaked (killed, it would leave them in /dev/shm)."""
    trackers = [p for p in procs if is_resource_tracker(p)]
    others = [p for p in procs if p not in trackers]
    sigkill(others)
    wait_ended(others, timeout_s)
    sigkill(wait_ended(trackers, 3.0))


def sigkill(procs: list) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:  # already gone
            pass


RESOURCE_TRACKER = "multiprocessing.resource_tracker"  # on its command line


def is_resource_tracker(proc: psutil.Process) -> bool:
    try:
        return RESOURCE_TRACKER in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False


def wait_ended(procs: list, timeout_s: float) -> list:
    """Wait up to `timeout_s` for the processes to end; return those still running."""
    deadline = time.time() + timeout_s
    while (alive := [p for p in procs if still_running(p)]) and time.time() < deadline:
        time.sleep(0.02)
    return alive


def still_running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
