"""`python -m labkit.jobs.rank MODULE ARGS...`: run MODULE as one rank that dies with its torchrun.

torchrun starts every rank in a session of its own, and tells them to stop only while
it is alive to do so. Killed outright (SIGKILL, the out-of-memory killer), it leaves its
ranks running on: they still have each other, so they would train to the end. Here each
rank asks Linux for SIGKILL the moment its torchrun dies (PR_SET_PDEATHSIG), then
becomes MODULE, exactly as `python -m MODULE ARGS` would.
"""

import os
import runpy
import signal
import sys

from labkit.jobs.agent import die_with_parent


def main() -> None:
    # labkit.jobs.torchrun wrote its pid here; SIGKILL: checkpoints and results are atomic, nothing to tidy.
    die_with_parent(int(os.environ.get("LABKIT_TORCHRUN_PID", os.getppid())), signal.SIGKILL)
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
