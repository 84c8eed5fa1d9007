"""Fault injection: `--set fault=RANK:STEP:KIND` makes one rank fail on purpose, on a
run's first attempt only (tests, and the fault-tolerance lessons).

A straggler: `--set straggler=RANK:FACTOR` makes one rank slow, for every method, on every
attempt: after each forward + backward it sleeps (FACTOR − 1) × the time that forward +
backward took, so its compute phase takes FACTOR × as long — a slower GPU, a busier node.
A sleep, not extra work: the rank frees its core, so on shared cores the others run as they
would without it. It shows what a slow worker costs a synchronous method (everyone waits)
and why asynchronous ones (ssp) exist. A rank with no data (a dedicated server) computes
nothing, so nothing is slowed there.
"""

import functools
import os
import signal
import time

from labkit.config import parse_straggler


def inject_fault(fault: str, rank: int, step: int) -> None:
    if not fault:
        return
    fault_rank, fault_step, kind = fault.split(":")
    if (int(fault_rank), int(fault_step)) != (rank, step):
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault on rank {rank} at step {step}")
    if kind == "exit":
        os._exit(3)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(1)


@functools.cache  # parsed once per run (make_config has already checked it)
def _straggler(text: str, nproc: int):
    return parse_straggler(text, nproc)


def straggle(cfg, rank: int, seconds: float) -> None:
    """On the straggler rank, sleep (FACTOR − 1) × `seconds`, the forward + backward time of
    this step (of this micro-batch, with accumulation) so far."""
    slow = _straggler(cfg.straggler, cfg.nproc)
    if slow and slow[0] == rank:
        time.sleep((slow[1] - 1) * max(0.0, seconds))
