"""`python labkit/jobs/agent.py PARENT_PID LOCK STARTED -- COMMAND...`: wait for our turn, then become torchrun.
(LOCK or STARTED may be `-`: a CPU job waits for nobody; a job without a STARTED file marks nothing.)

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

import fcntl
import os
import sys
from pathlib import Path

from labkit.jobs.processes import die_with_parent


def main(argv: list[str]) -> None:
    parent, lock_path, started, command = int(argv[0]), argv[1], argv[2], argv[argv.index("--") + 1:]
    die_with_parent(parent)
    if lock_path != "-":
        lock = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another job holds the devices
        os.set_inheritable(lock, True)    # torchrun keeps it until it exits
    if started != "-":
        Path(started).touch()
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
