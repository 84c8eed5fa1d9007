"""Fault injection: `--set fault=RANK:STEP:KIND` makes one rank fail on purpose, on a
run's first attempt only (tests, and the fault-tolerance lessons)."""

import os
import signal
import time


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
