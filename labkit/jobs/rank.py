"""`python -m labkit.jobs.rank MODULE ARGS...`: run MODULE as one rank that dies with its torchrun.

torchrun starts every rank in a session of its own, and tells them to stop only while
it is alive to do so. Killed outright (SIGKILL, the out-of-memory killer), it leaves its
ranks running on: they still have each other, so they would train to the end. Here each
rank first starts a thread that waits for its torchrun to end (a Linux pidfd: no polling)
and then SIGKILLs the rank, then becomes MODULE, exactly as `python -m MODULE ARGS` would.

labkit's runs give torchrun this file's path with `--run-path` and
`--start-method=forkserver`: the ranks are then forked from torchrun's forkserver, which has
imported MODULE already (labkit.jobs.torchrun.start_forkserver), so MODULE's imports cost nothing
here. That forkserver is our parent, not torchrun, and it lives as long as any rank does
(each rank holds its "alive" pipe): dying with our parent (PR_SET_PDEATHSIG) would never
happen. `python -m labkit.jobs.rank MODULE ARGS` works as well, as a fresh interpreter.
"""

import os
import runpy
import select
import signal
import sys
import threading
import time

from labkit.jobs.agent import die_with_parent
from labkit.jobs.failures import LOST_PEER

LOST_PEER_DELAY_S = 2.0  # 20 of torchrun's monitor intervals (0.1 s)


def main() -> None:
    # labkit.jobs.torchrun wrote its pid; SIGKILL: checkpoints and results are atomic, nothing to tidy.
    die_with(int(os.environ.get("LABKIT_TORCHRUN_PID", os.getppid())))
    sys.argv = sys.argv[1:]
    sys.modules.pop(sys.argv[0], None)  # the forkserver imported MODULE; run it afresh as __main__
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    except Exception as error:
        # This rank lost a peer that died first. torchrun reports forked ranks one only, the
        # first it sees end: let the dead one be seen first, so the report names the cause.
        if LOST_PEER.search(str(error)):
            time.sleep(LOST_PEER_DELAY_S)
        raise


def die_with(pid: int) -> None:
    """SIGKILL this process as soon as process `pid` has ended (at once if it already has)."""
    try:
        pidfd = os.pidfd_open(pid)  # Linux ≥ 5.3: readable once the process has ended
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (AttributeError, OSError):  # no pidfd here: at least die with our parent
        die_with_parent(os.getppid(), signal.SIGKILL)
        return

    def wait_then_die():
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_then_die, name="die-with-torchrun", daemon=True).start()

if __name__ == "__main__":
    main()
