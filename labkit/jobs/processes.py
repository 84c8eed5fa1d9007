"""Stopping processes so that nothing is left behind: the helpers every stop uses.

Two kinds of stop:
- `stop_tree(pid)`: SIGTERM the root (torchrun forwards it to its ranks and tidies up), wait,
  then SIGKILL whatever is still alive;
- `kill_tree(pid)`: SIGKILL the root and every descendant at once (nothing there to save).
After either, `kill_group(pid)` kills what is left of the job's own process group (the root
started one: labkit.jobs.command's `start_new_session`), and says what that was.

And one way to die with a parent: `die_with_parent` (Linux's PR_SET_PDEATHSIG; on macOS, which
has no such signal, a thread that watches the parent). The agent, torchrun, its forkserver,
every rank and data preparation's pool workers use it, so each link of the chain dies with the
one above it, even when that one was killed outright.

Only the standard library and psutil: every stage can use these without importing torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

import psutil

from labkit import system

PR_SET_PDEATHSIG = 1
RESOURCE_TRACKER = "multiprocessing.resource_tracker"  # on its command line
WATCH_INTERVAL_S = 0.2  # without the kernel's signal: how often a watcher asks who our parent is


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM, watch: bool = True) -> str:
    """Receive `sig` when our parent dies, and say how: "kernel" (Linux's PR_SET_PDEATHSIG,
    kept across exec), "watcher" (elsewhere: a daemon thread sees getppid() change when we are
    handed to another parent; gone at exec, so a process that execs asks again after it), or
    "none" (watch=False where the kernel cannot: a forkserver must stay single-threaded, and
    Python's own forkserver ends by itself when the process that started it is gone). The
    parent may already have died before we asked (we were then handed to another): checked."""
    how = "none"
    if system.is_linux() and _prctl_pdeathsig(sig):
        how = "kernel"
    elif watch:
        threading.Thread(target=_watch_parent, args=(parent_pid, sig), name="labkit-die-with-parent",
                         daemon=True).start()
        how = "watcher"
    if os.getppid() != parent_pid and how != "none":
        os.kill(os.getpid(), sig)
    return how


def _prctl_pdeathsig(sig: int) -> bool:
    try:  # CDLL(None): the C library this interpreter is linked with (glibc's libc.so.6, musl's, ...)
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, sig: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL_S)
    os.kill(os.getpid(), sig)


def stop_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM `pid`, wait up to `grace_s`, SIGKILL survivors. Descendants are listed first:
    once the root dies they are re-parented and lost."""
    family = _family(pid)
    if not family:
        return
    try:
        family[0].send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        pass
    kill_all(wait_ended(family, grace_s), timeout_s=5)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant at once, then wait for them to end."""
    kill_all(_family(pid), timeout_s=10)


def kill_group(group: int) -> list[str]:
    """SIGKILL what is left of process group `group` (led by the root that labkit.jobs.command
    started) and return what that was, the resource tracker aside (it is spared, see kill_all)."""
    members = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) == group and still_running(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    # One still on its way out (the forkserver, a rank whose parent just went) ends within
    # moments by itself: it died with torchrun. Only what outlives a second is left over.
    members = wait_ended(members, timeout_s=1.0)
    kill_all(members, timeout_s=5)
    commands = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in members]
    return [f"{pid} {command[:120]}" for pid, command in commands if RESOURCE_TRACKER not in command]


def kill_all(procs: list, timeout_s: float) -> None:
    """SIGKILL each process (one already gone is fine), then wait until each has ended. The
    multiprocessing resource tracker is spared until the others are gone: it then ends by
    itself and unlinks the semaphores they leaked (killed, it would leave them in /dev/shm)."""
    trackers = [p for p in procs if _is_resource_tracker(p)]
    others = [p for p in procs if p not in trackers]
    _sigkill(others)
    wait_ended(others, timeout_s)
    _sigkill(wait_ended(trackers, 3.0))


def wait_ended(procs: list, timeout_s: float) -> list:
    """Wait up to `timeout_s` for the processes to end; return those still running.
    Not psutil.wait_procs: it waits for a zombie to be reaped, and an orphan's zombie is
    reaped by init in its own time (here up to ~2 s later). A zombie has ended."""
    deadline = time.time() + timeout_s
    while (alive := [p for p in procs if still_running(p)]) and time.time() < deadline:
        time.sleep(0.02)
    return alive


def still_running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _family(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _sigkill(procs: list) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:  # already gone
            pass


def _is_resource_tracker(proc: psutil.Process) -> bool:
    try:
        return RESOURCE_TRACKER in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False
