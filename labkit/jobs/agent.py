"""`python labkit/jobs/agent.py PARENT_PID LOCK STARTED -- COMMAND...`: wait for our turn, then become torchrun.

Two jobs on the same GPUs would run on top of each other, so every job first takes
an exclusive lock on LOCK (flock; the kernel releases it when the process dies,
however it dies) and only then exec()s its command — which keeps the lock open.
While it waits the job is "queued"; the STARTED file marks "running".

It also asks Linux to send it SIGTERM when its parent dies (PR_SET_PDEATHSIG): a
Jupyter kernel restarted mid-run takes its torchrun with it, and torchrun's SIGTERM
handling stops the workers. torchrun's forkserver (labkit.jobs.forkserver_init), the ranks
(labkit.jobs.rank) and data preparation's pool workers do the same with their own parents,
so no link of the chain outlives the one above.
"""

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have Linux send us `sig` when our parent dies (it survives exec). The parent may
    already have died before we asked (we were then handed to another process): check."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except OSError:  # not Linux: the Job's own teardown still applies
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def main(argv: list[str]) -> None:
    parent, lock_path, started, command = int(argv[0]), argv[1], argv[2], argv[argv.index("--") + 1:]
    die_with_parent(parent)
    lock = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another job holds the devices
    os.set_inheritable(lock, True)    # torchrun keeps it until it exits
    Path(started).touch()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
