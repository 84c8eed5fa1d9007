"""What the loop writes down around a step, in one place: it records, and does nothing else
(the loop sets the learning rate itself, and a planted fault is faults.py's `Fault`).

The loop in worker.py calls it on each side of the step:

    recorder.new_step(step)      # the collective log: what this rank issues from here is this step's
    fault.strike(step)           # (--set fault: between the two, so a hung rank's heartbeat is behind)
    recorder.start(step)         # heartbeat, timeline switch; the step's calls, bytes and memory from here
    loss = train_step(...)       # the lesson: forward/backward, sync, update, sync
    recorder.stop(step)          # the step's clock and counters stop; the collective log: step done
    fault.confirm(step)          # (a planted skip with nothing to skip: before the step is written)
    recorder.write(step, loss)   # step record, progress line, non-finite check, checkpoint

A real job needs all of this bookkeeping (a watchdog, a resumable record, a live display),
and none of it changes from one method to the next, so none of it belongs in the loop.
It writes the per-step records (state.steps → steps.jsonl, result.json) and, on rank 0,
progress.jsonl; start_epoch / end_epoch keep each epoch's clock and mean train loss.

What a step sent is counted here, in one place, not by the method: from `start` to `stop`
a `CommRecord` (comm_record.py) sees every torch.distributed call the process groups issue —
the method's own, DDP's and FSDP's inside backward, a comm hook's — and `step_counts` turns them into the bytes each
puts on the wire by the algorithm the backend runs (bytes_sent, bytes_received, collectives,
ops in the step record). The method's own passes over its buffers (the cost model's γ,
`local_ops`) are what its declaration says (`About.passes`), the same every step.
"""

import json
import math
import time
from pathlib import Path

import torch.distributed as dist

from labkit.strategies.base import data_shard
from labkit.training import checkpoint
from labkit.training.collective_log import CollectiveLog
from labkit.training.comm_record import CommRecord, step_counts
from labkit.training.heartbeat import Heartbeat
from labkit.training.links import LinkMeter
from labkit.training.memory import MemoryMeter
from labkit.training.process_group import all_reduce_sum
from labkit.training.timing import StepTimer
from labkit.training.trace import Tracer


class StepRecorder:
    """The bookkeeping between two steps of one rank; `start` and `stop` bracket train_step."""

    def __init__(self, cfg, rank, device, state, strategy, model, net, optimizer, scaler, total_steps):
        self.cfg, self.rank, self.device, self.state = cfg, rank, device, state
        self.strategy, self.model, self.net, self.optimizer, self.scaler = strategy, model, net, optimizer, scaler
        self.total_steps = total_steps
        servers = cfg.nproc - cfg.data_ranks  # the method's About.servers, as make_config set data_ranks
        self.has_data = data_shard(rank, cfg.nproc, servers) is not None  # a dedicated server's loss is no loss
        passes = strategy.about.passes  # the method's own passes over its buffers (γ), as it declares them
        trainable = [p for p in net.parameters() if p.requires_grad]
        self.local_ops = passes(trainable, rank, strategy.world, strategy.options) if passes else {}
        out = self.out = Path(cfg.out_dir)
        self.heartbeat = Heartbeat(out / "logs" / f"heartbeat-{rank}")
        self.collectives = CollectiveLog(out / "logs" / f"collectives-{rank}.jsonl", rank)  # read on a hang
        self.timer = StepTimer(device)  # train_step marks each phase on it
        self.progress = open(out / "progress.jsonl", "a", buffering=1) if rank == 0 else None
        self.links = LinkMeter(cfg)  # several nodes: what crossed this node's link, per step
        # What this rank holds, counted in the first measured step (train_step calls it before
        # zero_grad, while gradients exist); its peak counts from here, the start of training.
        self.memory = MemoryMeter(rank, device, count_at=min(cfg.timing_warmup_steps + 1, total_steps))
        self.tracer = Tracer(cfg, rank, strategy.world, device)  # --set trace=true: a profiler trace (trace.py)
        self.sync_bn = getattr(net, "sync_bn_count", None)  # --set sync_bn=true: its layers' collectives
        # every torch.distributed call of a step, counted here (none where there is no process group)
        self.comm = CommRecord() if dist.is_initialized() else None
        self.backend = dist.get_backend() if dist.is_initialized() else "gloo"

    def start_epoch(self, epoch: int):
        self.epoch, self.epoch_start, self.first_step = epoch, time.perf_counter(), self.state.global_step

    def new_step(self, step: int):
        """The collective log: what this rank issues from here on is `step`'s."""
        self.collectives.step_started(step)

    def start(self, step: int):
        """The heartbeat says `step`; its timeline, calls, bytes and memory are recorded from here."""
        cfg = self.cfg
        self.heartbeat.beat(step)
        self.timer.record_intervals = cfg.timing_warmup_steps < step <= cfg.timing_warmup_steps + cfg.timeline_steps
        if self.sync_bn:
            self.sync_bn.reset()
        self.links.before()
        self.memory.arm(step)
        if self.comm:
            self.comm.take()  # what ran between steps (validation, checkpoints) is no step's
            self.comm.__enter__()

    def stop(self, step: int):
        """The step's clock and counters stop; the collective log: `step` is done."""
        self.times = self.timer.stop()
        self.counted = self.count_step()
        self.collectives.step_ended(step)

    def write(self, step: int, loss: float):
        """The step record, rank 0's progress line, the non-finite check, a checkpoint when due."""
        cfg, state, times, counted = self.cfg, self.state, self.times, self.counted
        self.links.after()
        figures = self.strategy.after_step(self.model)  # the method's bookkeeping, outside the timed window
        state.global_step, state.step_in_epoch = step, state.step_in_epoch + 1
        if self.has_data:
            state.loss_sum, state.seen = state.loss_sum + loss, state.seen + 1
        finite = math.isfinite(loss)
        state.steps.append(dict(step=step, epoch=self.epoch, loss=loss if finite else None,
                                **counted, local_ops={kind: list(v) for kind, v in self.local_ops.items()},
                                **times, **figures))
        if self.sync_bn:  # SyncBatchNorm's own collectives, apart from the method's (models.py)
            state.steps[-1].update(self.sync_bn.record())
        if self.progress:  # json.dumps: a NaN loss must still make a line json.loads can read
            self.progress.write(json.dumps({"epoch": self.epoch, "step": step, "total_steps": self.total_steps,
                                            "loss": loss if finite else str(loss),
                                            "img_s": round(cfg.global_batch / times["step_s"], 1)}) + "\n")
        if not finite and cfg.stop_on_nonfinite:
            raise FloatingPointError(f"loss became {loss} at step {step} (training diverged: lower --set lr, "
                                     f"or --set stop_on_nonfinite=false to keep going)")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
            self.timer.start()  # the checkpoint's I/O is not the next step's data wait
        self.tracer.step()

    def count_step(self) -> dict:
        """What this step sent: every torch.distributed call since `start`, in bytes."""
        if not self.comm:
            return step_counts([])
        self.comm.__exit__(None, None, None)
        seen = self.comm.take()
        return step_counts(seen, self.backend)

    def end_epoch(self) -> dict:
        """The epoch's figures: its train loss averaged over every data rank, its time and throughput."""
        loss_total, seen_total = all_reduce_sum([self.state.loss_sum, self.state.seen], self.device)
        stats = {"epoch": self.epoch, "train_loss": loss_total / max(1, seen_total),
                 "steps": self.state.global_step - self.first_step, "time_s": time.perf_counter() - self.epoch_start}
        stats["throughput_img_s"] = self.cfg.global_batch * stats["steps"] / stats["time_s"]
        return stats

    def save_checkpoint(self):
        """checkpoint.pt (and the new lines of steps.jsonl): every rank hands over the state its
        method owns (e.g. its shard's momentum), rank 0 writes."""
        states = gather_to_rank0(self.strategy.state_dict())  # [{}, {}, ...] for a method that owns none
        with self.strategy.whole_model(self.net) as whole:  # every rank: a sharded model gathers itself
            model_state, optimizer_state = checkpoint.whole_state(whole, self.optimizer)
        if self.rank == 0:
            checkpoint.save(self.out / "checkpoint.pt", model_state, optimizer_state, self.scaler, self.state,
                            self.cfg.to_dict(), states if any(states) else None)

    def close(self):
        self.tracer.close()  # again: a run that failed before the result still writes its trace
        if self.progress:
            self.progress.close()


def gather_to_rank0(value):
    """Every rank's `value`, as a list by rank, on rank 0 (None elsewhere)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
