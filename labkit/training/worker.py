"""The training loop one rank runs under torchrun: `python -m labkit.training.worker config.json`.

Read it top to bottom: setup (process group, model, optimizer, the method, data),
then the epochs (train_step after train_step, validation, checkpoint), then the
result. The synchronization method is the `strategy` object; this file is the same
for every method, the step itself is in step.py, what is written down around each
step (records, progress, heartbeat, checkpoints) is the `recorder`'s (recorder.py), and
a fault planted on purpose (`--set fault=`) is the `fault`'s (faults.py).
"""

import os
import sys
import time
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from labkit.config import RunConfig
from labkit.files import write_json
from labkit.strategies import load_strategy
from labkit.strategies.base import data_shard, start_from_rank0
from labkit.training import checkpoint
from labkit.training.calibration import calibrate
from labkit.training.checkpoint import TrainState
from labkit.training.data import build_loaders, epoch_steps, steps_per_epoch
from labkit.training.evaluate import validate
from labkit.training.faults import Fault
from labkit.training.memory import gather_memory
from labkit.training.models import build_model, with_sync_batch_norm
from labkit.training.optim import build_optimizer, set_lr
from labkit.training.process_group import finish, setup, sync_buffers
from labkit.training.recorder import StepRecorder
from labkit.training.result import build_result, gather_step_medians, gather_timeline
from labkit.training.step import train_step


@record  # a failing rank's traceback goes to torchrun's error file, and from there to the user
def main(config_path: str):
    # -- setup ---------------------------------------------------------------------
    cfg = RunConfig.load(config_path)
    out = Path(cfg.out_dir)
    rank, world, device = setup(cfg)
    torch.manual_seed(cfg.seed)  # same seed on every rank → identical initial weights

    model = build_model(cfg.model, cfg.num_classes).to(device, getattr(torch, cfg.dtype))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg)  # --set optimizer=sgd|adamw
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    method = load_strategy(cfg.strategy)
    strategy = method(cfg, rank, world)
    about = method.about.of(cfg)  # what the method says it is (strategies/base.py: About)

    # Resume on --resume, or when torchrun restarted us after a failure: the model before prepare,
    # so whatever the method builds (DDP, shards) starts from it; the optimizer and the method's
    # own state after it, so its load_state_dict acts on what it built.
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    saved = checkpoint.load(out / "checkpoint.pt") if (cfg.resume or attempt > 0) and (out / "checkpoint.pt").exists() else None
    if saved:
        checkpoint.restore_model(saved, model)
    shard = data_shard(rank, world, about.servers)  # None: this rank computes no gradients (a dedicated server)
    compute_only_s = calibrate(model, cfg, device) if shard else None
    if cfg.sync_bn:  # after the compute-only calibration: its collectives are communication
        model = with_sync_batch_norm(model, device)  # BatchNorm over the global batch
    start_from_rank0(model, world)  # every method starts from rank 0's weights, whatever its seed drew
    model = strategy.prepare(model, optimizer)
    net = getattr(model, "module", model)  # the bare model, for validation and checkpoints
    state = checkpoint.restore(saved, out / "checkpoint.pt", optimizer, scaler, strategy, rank) if saved else TrainState()

    data_rank, data_ranks = shard or (0, cfg.data_ranks)
    train_loader, val_loader = build_loaders(cfg, data_rank, data_ranks, rank, world, device)
    total_steps = steps_per_epoch(train_loader, cfg.accumulate) * cfg.epochs  # optimizer steps
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    recorder = StepRecorder(cfg, rank, device, state, strategy, model, net, optimizer, scaler, total_steps)
    # a resumed run, and the attempt torchrun restarts after the fault, must get past the fault
    fault = Fault(cfg.fault, rank, first_attempt=not cfg.resume and attempt == 0)
    timer = recorder.timer
    started = time.perf_counter()

    # -- epochs --------------------------------------------------------------------
    for epoch in range(state.epoch, cfg.epochs):
        if state.global_step >= total_steps:
            break
        recorder.start_epoch(epoch)
        if shard:
            batches = epoch_steps(train_loader, epoch, state.step_in_epoch, cfg)  # each: accumulate micro-batches
        else:  # a dedicated server takes part in every step without data
            batches = iter([[(None, None)]] * (steps_per_epoch(train_loader, cfg.accumulate) - state.step_in_epoch))
        timer.start()  # the wait for the first batch is the first step's data time
        for micro_batches in batches:  # one optimizer step each
            step = state.global_step + 1
            recorder.new_step(step)  # the collective log: what this rank issues from here is this step's
            fault.strike(step)  # --set fault=RANK:STEP:KIND: fails here on purpose, before the heartbeat says `step`
            recorder.start(step)  # heartbeat, timeline switch; the step's calls, bytes and memory counted from here
            set_lr(optimizer, cfg.lr_at(step))  # the lr schedule (warm-up): a function of the step number alone
            loss = train_step(model, micro_batches, strategy, optimizer, scaler, timer, cfg, device, recorder.memory)
            recorder.stop(step)  # the step's clock and counters stop; the collective log: this step is done
            fault.confirm(step)  # a planted skip that found no dist.all_reduce to skip says so, before the record
            recorder.write(step, loss)  # step record, progress line, non-finite check, checkpoint
            if step >= total_steps:
                break

        # End of epoch: the train loss over every data rank, then validation.
        stats = recorder.end_epoch()
        if val_loader is not None:
            sync_buffers(net, source=cfg.nproc - cfg.data_ranks)  # the first rank that trained
            with strategy.whole_model(net) as evaluated:  # a sharded model gathers itself whole first
                stats.update(validate(evaluated, val_loader, device, cfg, recorder.heartbeat))
        state.epochs.append(stats)
        state.epoch, state.step_in_epoch, state.loss_sum, state.seen = epoch + 1, 0, 0.0, 0
        recorder.save_checkpoint()

    # -- result --------------------------------------------------------------------
    total_time = time.perf_counter() - started
    recorder.tracer.close()  # before the next collective: every rank's trace is written when rank 0 names them
    rank_medians = gather_step_medians(state.steps, cfg.timing_warmup_steps)
    timeline = gather_timeline(timer.intervals, rank)
    memory = gather_memory(recorder.memory)  # every rank's bytes held and peak (memory.py)
    topology = recorder.links.topology(cfg.timing_warmup_steps)  # several nodes: each node's link bytes
    if rank == 0:
        result = build_result(cfg, about, world, device, state.steps, state.epochs, total_time,
                              rank_medians, compute_only_s, timeline)
        write_json(out / "result.json", {**result, "topology": topology, "memory": memory,
                                          "trace": recorder.tracer.entry(total_steps)})
    recorder.close()
    finish()


if __name__ == "__main__":
    main(sys.argv[1])
