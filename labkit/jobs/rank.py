"""`python -m labkit.jobs.rank MODULE ARGS...`: run MODULE as one rank that dies with its torchrun.

torchrun tells its ranks to stop only while it is alive to do so. Killed outright (SIGKILL,
the out-of-memory killer), it would leave them running on: they still have each other, so
they would train to the end. Here each rank asks Linux for SIGKILL the moment its parent
dies (PR_SET_PDEATHSIG; on macOS a thread watching its parent), then becomes MODULE, exactly as `python -m MODULE ARGS` would.

labkit's runs give torchrun this file's path with `--run-path` and
`--start-method=forkserver`: the ranks are then forked from torchrun's forkserver, which has
imported MODULE already (labkit.jobs.torchrun.start_forkserver), so MODULE's imports cost
nothing here. The forkserver is then our parent, and it dies with torchrun in the same way
(labkit.jobs.forkserver_init). `python -m labkit.jobs.rank MODULE ARGS` works as well, as a
fresh interpreter whose parent is torchrun.
"""

import gc
import os
import runpy
import signal
import sys
import time

from labkit.jobs.processes import die_with_parent
from labkit.jobs.failures import LOST_PEER

LOST_PEER_DELAY_S = 2.0  # 20 of torchrun's monitor intervals (0.1 s)


def main() -> None:
    # SIGKILL: checkpoints and results are written atomically, nothing to tidy.
    die_with_parent(os.getppid(), signal.SIGKILL)
    # The forkserver imported with the collector off (forkserver_init). What it imported lives
    # as long as we do: frozen, the collector's passes never walk it (nor copy its pages, which
    # stay shared with the forkserver), and it is on again for what training allocates.
    gc.freeze()
    gc.enable()
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


if __name__ == "__main__":
    main()
