"""Imported first by torchrun's forkserver (labkit.jobs.torchrun.start_forkserver): from now
on the forkserver dies the moment torchrun does (PR_SET_PDEATHSIG), as the ranks it forks die
with it. A chain of parent-death signals, kept by the kernel: torchrun killed outright
(SIGKILL, the out-of-memory killer) takes the forkserver with it, and the forkserver its ranks,
even a rank stuck inside C code.

On macOS (no parent-death signal) no watcher thread is started here: the forkserver must stay
single-threaded to fork safely, and Python's forkserver ends by itself once torchrun is gone
(its last client closes the pipe it waits on); each rank watches its own parent (rank.py).

And no garbage collection from here on: the forkserver's imports (torch, torchvision, the worker:
the longest wait of a run's start, docs/BENCHMARKS.md) create ~500,000 objects and no garbage, and
the collector's passes over them are ~10 % of that time. Each rank turns it back on (rank.py),
after moving what it inherited out of the collector's way (gc.freeze)."""

import gc
import os
import signal

from labkit.jobs.processes import die_with_parent

gc.disable()
die_with_parent(int(os.environ["LABKIT_TORCHRUN_PID"]), signal.SIGKILL, watch=False)
