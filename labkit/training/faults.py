"""Fault injection: `--set fault=RANK:STEP:KIND` makes one rank fail on purpose, on a
run's first attempt only (tests, and the fault-tolerance lessons).

KIND: raise (an exception), exit, kill (SIGKILL), hang (the rank stops before the step's
collectives: the watchdog stops the run), skip (the rank skips the step's first
`dist.all_reduce`: its collective sequence is one off the others' — a desync; gloo aborts
on the size mismatch, NCCL may hang). A skip needs a method that calls dist.all_reduce from
Python: DDP's all-reduces run in C++, out of reach, and the run says so at that step's end.

A straggler: `--set straggler=RANK:FACTOR` makes one rank slow, for every method, on every
attempt: after each forward + backward it sleeps (FACTOR − 1) × the time that forward +
backward took, so its compute phase takes FACTOR × as long — a slower GPU, a busier node.
A sleep, not extra work: the rank frees its core, so on shared cores the others run as they
would without it. It shows what a slow worker costs a synchronous method (everyone waits)
and why asynchronous ones (ssp) exist. A rank with no data (a dedicated server) computes
nothing, so nothing is slowed there. `--set straggler=any:FACTOR` slows a different rank
each forward + backward pass, drawn from the seed and the pass number, the same draw on every
rank (a resumed run counts its passes from 1 again, so it draws anew): a transient
straggler, which a stale-synchronous method can absorb and a persistent one it cannot
(the fast workers can run only s steps ahead of a rank that is always slow).
"""

import functools
import itertools
import os
import random
import signal
import sys
import time

import torch.distributed as dist

from labkit.config import parse_straggler


class Fault:
    """The fault planted on this rank (`--set fault=RANK:STEP:KIND`), as the loop calls it: `strike`
    as a step starts, `confirm` as it ends. Only on a run's first attempt: a resumed run, or the
    attempt torchrun restarts after the fault, must get past the fault it was started to survive."""

    def __init__(self, spec: str, rank: int, first_attempt: bool):
        self.spec, self.rank = spec if first_attempt else "", rank

    def strike(self, step: int) -> None:
        """The loop calls it after the collective log has entered `step` and before the heartbeat
        says `step`: a rank that hangs here is the one whose heartbeat is behind (the watchdog)."""
        inject_fault(self.spec, self.rank, step)

    def confirm(self, step: int) -> None:
        """At the end of a skip's step, before the step is recorded: had the rank an all-reduce to skip?"""
        if self.spec.endswith(":skip") and dist.all_reduce.__name__ == "skipped":
            raise RuntimeError(f"fault='{self.spec}': rank {self.rank} made no dist.all_reduce call at step {step}, "
                               f"so none was skipped (DDP's all-reduces run in C++); plant it in a method that "
                               f"calls dist.all_reduce, e.g. --strategy allreduce")


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
    if kind == "skip":
        _skip_next_all_reduce(rank, step)


def _skip_next_all_reduce(rank: int, step: int) -> None:
    """The next dist.all_reduce on this rank does nothing (once), as a rank that forgot one would."""
    real = dist.all_reduce

    def skipped(tensor, *args, async_op=False, **kwargs):
        dist.all_reduce = real
        print(f"labkit fault: rank {rank} skips an all-reduce of {tensor.numel() * tensor.element_size()} B "
              f"at step {step}", file=sys.stderr, flush=True)
        return _Done() if async_op else None

    dist.all_reduce = skipped


class _Done:  # what an async all-reduce that was never sent hands back
    def wait(self, *args, **kwargs):
        return True

    def is_completed(self):
        return True




@functools.cache  # parsed once per run (make_config has already checked it)
def _straggler(text: str, nproc: int):
    return parse_straggler(text, nproc)


_calls = itertools.count(1)  # forward + backward passes so far: the same count on every data rank


def straggle(cfg, rank: int, seconds: float) -> None:
    """On the straggler rank, sleep (FACTOR − 1) × `seconds`, the forward + backward time of
    this step (of this micro-batch, with accumulation) so far."""
    slow = _straggler(cfg.straggler, cfg.nproc)
    if not slow:
        return
    slow_rank, factor = slow
    if slow_rank is None:  # any: this pass's straggler, drawn among the ranks with data
        first_data_rank = cfg.nproc - (cfg.data_ranks or cfg.nproc)
        slow_rank = random.Random(cfg.seed * 1_000_003 + next(_calls)).randrange(first_data_rank, cfg.nproc)
    if slow_rank == rank:
        time.sleep((factor - 1) * max(0.0, seconds))
