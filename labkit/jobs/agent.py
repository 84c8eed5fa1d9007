"""`python -m labkit.jobs.agent LOCK STARTED -- COMMAND...`: wait for our turn, then become torchrun.

Two jobs on the same GPUs would run on top of each other, so every job first takes
an exclusive lock on LOCK (flock; the kernel releases it when the process dies,
however it dies) and only then exec()s its command — which keeps the lock open.
While it waits the job is "queued"; the STARTED file marks "running".

It also asks Linux to send it SIGTERM when its parent dies (PR_SET_PDEATHSIG): a
Jupyter kernel restarted mid-run takes its torchrun with it, and torchrun's SIGTERM
handling stops the workers.
"""

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the Job's own teardown still applies
        pass


def main(argv: list[str]) -> None:
    lock_path, started, command = argv[0], argv[1], argv[argv.index("--") + 1:]
    die_with_parent()
    lock = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another job holds the devices
    os.set_inheritable(lock, True)    # torchrun keeps it until it exits
    Path(started).touch()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
