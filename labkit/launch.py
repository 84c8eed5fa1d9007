"""Job: one training run as a background `torchrun`, with progress, logs and teardown.

    job = Job(cfg).start()      # returns at once
    job.progress()              # {'epoch', 'step', 'total_steps', 'loss', 'img_s'}
    job.wait()                  # prints progress until the run ends
    job.result()                # the parsed result.json (raises RunFailed on failure)

The run folder (cfg.out_dir) holds config.json, progress.jsonl (rank 0, a line a
step), result.json, checkpoint.pt and logs/ (torchrun's per-rank logs and error
files). torchrun starts its workers in their own process sessions, so stopping a
job means: note every descendant, SIGTERM the agent, wait, then kill what is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from . import hardware
from .config import LAB_ROOT, RunConfig, results_root
from .files import write_json

FINAL = ("ok", "failed", "hung", "interrupted")


class RunFailed(RuntimeError):
    """The run did not end ok; the message names the failing rank and its traceback."""


STARTUP_GRACE_S = 300.0  # before a rank's first step, the watchdog waits this long more


def torchrun_command(cfg: RunConfig, config_path: Path) -> list[str]:
    if cfg.strategy == "single":  # one plain process, no rendezvous
        return [sys.executable, "-m", "labkit.worker", str(config_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={cfg.nproc}", f"--max-restarts={cfg.max_restarts}",
            f"--log-dir={Path(cfg.out_dir) / 'logs'}", "--redirects=3",
            "-m", "labkit.worker", str(config_path)]


def queued_command(cfg: RunConfig, config_path: Path) -> list[str]:
    """Wrap the command in labkit.agent: GPU jobs take turns on a lock (CPU jobs share
    the cores, so each has a lock of its own and never waits)."""
    lock = results_root() / (".cuda.lock" if cfg.device == "cuda" else f".cpu-{cfg.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    # Run as a file, not `-m labkit.agent`: the package would import torch (4 s) for nothing.
    return [sys.executable, str(Path(__file__).with_name("agent.py")), str(lock), str(Path(cfg.out_dir) / "started"), "--",
            *torchrun_command(cfg, config_path)]


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
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS=str(hardware.cpu_threads_per_rank(self.cfg.nproc)))
        if self.cfg.strategy == "single":  # torchrun sets this for its workers; a plain process needs it set
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
        """queued / running / ok / failed / hung / interrupted"""
        if self._status == "running" and self.proc.poll() is not None:
            self._finish()
        if self._status == "running" and not (self.out / "started").exists():
            return "queued"
        return self._status

    def progress(self) -> dict:
        """The last progress line rank 0 wrote (empty before the first step)."""
        path = self.out / "progress.jsonl"
        if not path.exists():
            return {}
        lines = path.read_bytes().splitlines()
        for line in reversed(lines):
            try:
                return json.loads(line)
            except json.JSONDecodeError:  # a line being written right now
                continue
        return {}

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
            while self.status in ("queued", "running"):
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
        if self.status in ("queued", "running"):
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
        self.log.close()
        stop_process_tree(self.proc.pid)  # stragglers of a failed job (workers in their own sessions)
        path = self.out / "result.json"
        if path.exists() and status is None and path.stat().st_mtime >= self.started:
            self._status = json.loads(path.read_text())["status"]
            return
        self._status = status or "failed"
        write_json(path, {"schema": 1, "name": self.cfg.name, "strategy": self.cfg.strategy,
                          "status": self._status, "config": self.cfg.to_dict(),
                          "exit_code": self.proc.returncode,
                          "failure": failure or read_failure(self.out / "logs", self.started)})


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
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def read_failure(log_dir: Path, since: float = 0.0) -> dict | None:
    """The failure that brought the job down. torchrun's log ends with a block listing
    every failed rank (exit code, error file) and its guess at the "Root Cause (first
    observed failure)". The error file (written by @record in the worker) holds the
    exception and traceback; a rank that died without raising (os._exit, a signal) has
    none, so its exit code and the end of its stderr tell the cause. A plain process
    (`single`) writes logs/0/error.json."""
    launcher = log_dir / "launcher.log"
    text = launcher.read_text(errors="replace") if launcher.exists() else ""
    report = text.rsplit("Failures:", 1)[-1] if "Failures:" in text else ""
    entries = [parse_entry(block) for block in re.split(r"\n\[\d+\]:", report)[1:]]
    if entries:
        root = entries[-1]  # torchrun prints its root cause last
        # When one rank fails, the agent stops the others with SIGTERM, and a rank may
        # raise "connection reset by peer" just before: casualties, not the cause.
        causes = [e for e in entries if e["code"] != -signal.SIGTERM] or [root]
        entry = next((e for e in causes if e["rank"] == root["rank"]), causes[0])
        if entry["error_file"].is_file():
            return error_record(entry["error_file"], entry["rank"])
        code = entry["code"]
        cause = (f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                 else f"exited with exit code {code} without raising")
        last_words = stderr_tail(log_dir, entry["local_rank"])
        return {"rank": entry["rank"], "exception": cause + (f": {last_words[-1]}" if last_words else ""),
                "traceback": "\n".join(last_words) or entry["traceback"]}
    single = log_dir / "0" / "error.json"
    if single.is_file() and single.stat().st_mtime >= since:
        return error_record(single, 0)
    return None


def parse_entry(block: str) -> dict:
    field = lambda name: (re.search(rf"{name}\s*:\s*(.*)", block) or [None, ""])[1].strip()
    ranks = re.match(r"(\d+)(?: \(local_rank: (\d+)\))?", field("rank"))
    return {"rank": int(ranks[1]), "local_rank": int(ranks[2] or ranks[1]),
            "code": int(re.match(r"-?\d+", field("exitcode")).group()), "error_file": Path(field("error_file")),
            "traceback": re.split(r"\n[=-]{8,}", block.split("traceback :")[-1])[0].strip()}


def stderr_tail(log_dir: Path, local_rank: int, lines: int = 3) -> list[str]:
    """The last words a rank wrote before it died (a C++ abort prints `what(): …`)."""
    logs = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return []
    text = [line.strip() for line in logs[-1].read_text(errors="replace").splitlines()]
    aborts = [line for line in text if line.startswith("what():")]
    return aborts[-1:] or [line for line in text if line and not line.startswith("File ")][-lines:]


def error_record(path: Path, rank: int) -> dict:
    """One rank's error file, as torch's elastic `record` writes it."""
    message = json.loads(path.read_text())["message"]
    if isinstance(message, str):
        message = {"message": message, "extraInfo": {}}
    return {"rank": rank, "exception": message.get("message", "").strip(),
            "traceback": message.get("extraInfo", {}).get("py_callstack", "")}


def describe_failure(result: dict) -> str:
    failure = result.get("failure") or {}
    head = f"run {result.get('name')} {result.get('status')}"
    if not failure:
        return f"{head} (exit code {result.get('exit_code')}; see its logs/)"
    return (f"{head}: rank {failure['rank']}: {failure['exception']}\n"
            f"{failure.get('traceback', '').rstrip()}")
