"""`python -m labkit.jobs.rank MODULE ARGS...`: run MODULE as one rank that dies with its torchrun.

torchrun starts every rank in a session of its own, and tells them to stop only while
it is alive to do so. Killed outright (SIGKILL, the out-of-memory killer), it leaves its
ranks running on: they still have each other, so they would train to the end. Here each
rank asks Linux for SIGKILL the moment its torchrun dies (PR_SET_PDEATHSIG), then
becomes MODULE, exactly as `python -m MODULE ARGS` would.

labkit's runs give torchrun this file's path with `--run-path` and `--start-method=fork`:
the ranks are then forked from torchrun, which has imported MODULE already
(labkit.jobs.torchrun.preload), so MODULE's imports cost nothing here. A job that may
restart (`--max-restarts`) runs `python -m labkit.jobs.rank` instead: fresh interpreters.
"""

import os
import runpy
import signal
import sys
import time

from labkit.jobs.agent import die_with_parent
from labkit.jobs.failures import LOST_PEER

LOST_PEER_DELAY_S = 2.0  # 20 of torchrun's monitor intervals (0.1 s)


def main() -> None:
    # labkit.jobs.torchrun wrote its pid here; SIGKILL: checkpoints and results are atomic, nothing to tidy.
    die_with_parent(int(os.environ.get("LABKIT_TORCHRUN_PID", os.getppid())), signal.SIGKILL)
    sys.argv = sys.argv[1:]
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    except Exception as error:
        # This rank lost a peer that died first. torchrun reports forked ranks one only, the
        # first it sees end: let the dead one be seen first, so the report names the cause.
        if LOST_PEER.search(str(error)):
            time.sleep(LOST_PEER_DELAY_S)
        raise


if __name__ == "__main__":
    main()
