"""The training loop one rank runs under torchrun: `python -m labkit.training.worker config.json`.

Read it top to bottom: set up the process group from torchrun's environment, build
model, optimizer, strategy and data, then for each epoch train (timing every phase),
validate, checkpoint; finally write result.json. The synchronization method is the
`strategy` object; this file is the same for every method.
"""

import copy
import os
import signal
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record

from labkit import hardware
from labkit.config import RunConfig
from .data import build_loaders, epoch_batches
from labkit.training import checkpoint
from .checkpoint import TrainState
from labkit.files import write_json
from .models import build_model
from labkit.strategies import STRATEGIES
from .timing import StepTimer, summarize


def setup(cfg: RunConfig):
    """Rank, world size and device from torchrun's environment (a plain process = rank 0 of 1)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(hardware.cpu_threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if "RANK" in os.environ:
        # Our own view of torchrun's store, prefixed by the attempt: after a restart the
        # store still holds the dead workers' addresses, and gloo would dial them.
        timeout = timedelta(seconds=cfg.pg_timeout_s)
        agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=rank == 0 and not agent_hosts_store, timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(cfg.backend, store=dist.PrefixStore(f"labkit/attempt_{attempt}", store),
                                rank=rank, world_size=world, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return rank, world, device


def all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def validate(model, loader, device, cfg, heartbeat) -> dict:
    """Loss, top-1 and top-5 over the whole val set: sums and counts are added across
    ranks, so each image counts once whatever the shard sizes."""
    model.eval()
    loss_sum = top1 = top5 = count = 0.0
    with torch.no_grad(), autocast(cfg, device):
        for images, labels in loader:
            heartbeat.touch()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += (best[:, 0] == labels).sum().item()
            top5 += (best == labels[:, None]).any(dim=1).sum().item()
            count += labels.numel()
    model.train()
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], device)
    return {"val_loss": loss_sum / count, "val_top1": 100 * top1 / count, "val_top5": 100 * top5 / count}


def autocast(cfg, device):
    if cfg.amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


@record  # a failing rank's traceback goes to torchrun's error file, and from there to the user
def main(config_path: str):
    cfg = RunConfig.load(config_path)
    out = Path(cfg.out_dir)
    rank, world, device = setup(cfg)
    torch.manual_seed(cfg.seed)  # same seed on every rank → identical initial weights

    model = build_model(cfg.model, cfg.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    strategy = STRATEGIES[cfg.strategy](cfg, rank, world)
    # Resume from the checkpoint on --resume, or when torchrun restarted us after a failure —
    # before the strategy wraps the model, so whatever it builds (DDP, shards) starts from it.
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    state = TrainState()
    if (cfg.resume or attempt > 0) and (out / "checkpoint.pt").exists():
        state = checkpoint.restore(out / "checkpoint.pt", model, optimizer, scaler, device)
    compute_only_s = calibrate(model, cfg, device) if strategy.data_shard() else None
    model = strategy.prepare(model, optimizer)
    net = getattr(model, "module", model)  # the bare model, for validation and checkpoints

    shard = strategy.data_shard()  # None: this rank computes no gradients (a dedicated server)
    data_rank, data_ranks = shard or (0, cfg.data_ranks)
    train_loader, val_loader = build_loaders(cfg, data_rank, data_ranks, rank, world, device)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    first_attempt = not cfg.resume and attempt == 0
    heartbeat = Heartbeat(out / "logs" / f"heartbeat-{rank}")

    timer = StepTimer(device)
    progress = open(out / "progress.jsonl", "a", buffering=1) if rank == 0 else None
    started = time.perf_counter()
    for epoch in range(state.epoch, cfg.epochs):
        if state.global_step >= total_steps:
            break
        epoch_start, first_step = time.perf_counter(), state.global_step
        if shard:
            batches = epoch_batches(train_loader, epoch, state.step_in_epoch, cfg.batch_size)
        else:  # a dedicated server takes part in every step without data
            batches = iter([(None, None)] * (steps_per_epoch - state.step_in_epoch))
        timer.start()
        for images, labels in batches:
            if first_attempt:
                inject_fault(cfg.fault, rank, state.global_step + 1)
            heartbeat.beat(state.global_step + 1)
            timer.record_intervals = cfg.warmup_steps < state.global_step + 1 <= cfg.warmup_steps + cfg.timeline_steps
            strategy.reset_counters()
            loss_value = 0.0
            if shard:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                timer.mark("data_s")
                with autocast(cfg, device):
                    loss = F.cross_entropy(model(images), labels)
                scaler.scale(loss).backward()
                loss_value = loss.item()
                timer.mark("compute_s")
            strategy.sync_gradients(model)
            timer.mark("sync_s")
            strategy.update(optimizer, scaler)
            timer.mark("optimizer_s")
            strategy.sync_parameters(model)
            timer.mark("sync_s")
            optimizer.zero_grad(set_to_none=True)
            record_ = timer.stop()

            state.global_step += 1
            state.step_in_epoch += 1
            if shard:
                state.loss_sum, state.seen = state.loss_sum + loss_value, state.seen + 1
            state.steps.append(dict(step=state.global_step, epoch=epoch, loss=loss_value,
                                    bytes_sent=strategy.bytes_sent, bytes_received=strategy.bytes_received,
                                    collectives=strategy.collectives, **record_))
            if progress:
                img_s = cfg.global_batch / record_["step_s"]
                progress.write(f'{{"epoch": {epoch}, "step": {state.global_step}, "total_steps": {total_steps}, '
                               f'"loss": {loss_value:.5f}, "img_s": {img_s:.1f}}}\n')
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and rank == 0:
                checkpoint.save(out / "checkpoint.pt", net, optimizer, scaler, state, cfg.to_dict())
            if state.global_step >= total_steps:
                break

        # End of epoch: the train loss over every data rank, then validation.
        loss_total, seen_total = all_reduce_sum([state.loss_sum, state.seen], device)
        stats = {"epoch": epoch, "train_loss": loss_total / max(1, seen_total),
                 "steps": state.global_step - first_step, "time_s": time.perf_counter() - epoch_start}
        stats["throughput_img_s"] = cfg.global_batch * stats["steps"] / stats["time_s"]
        if val_loader is not None:
            sync_buffers(net, source=cfg.nproc - cfg.data_ranks)
            stats.update(validate(net, val_loader, device, cfg, heartbeat))
        state.epochs.append(stats)
        state.epoch, state.step_in_epoch, state.loss_sum, state.seen = epoch + 1, 0, 0.0, 0
        if rank == 0:
            checkpoint.save(out / "checkpoint.pt", net, optimizer, scaler, state, cfg.to_dict())

    total_time = time.perf_counter() - started
    rank_medians = gather_step_medians(state.steps, cfg.warmup_steps)
    timeline = gather_timeline(timer.intervals, rank)
    if rank == 0:
        result = build_result(cfg, world, device, state.steps, state.epochs, total_time, rank_medians,
                              compute_only_s)
        result["timeline"] = timeline
        write_json(out / "result.json", result)
        progress.close()
    if dist.is_initialized():
        dist.barrier()  # nobody leaves before rank 0 has written the result
        dist.destroy_process_group()


class Heartbeat:
    """Each rank overwrites logs/heartbeat-RANK with the step it is working on: the
    launcher's watchdog reads the files' age (is anyone moving?) and content (who is stuck)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)

    def beat(self, step: int) -> None:
        os.pwrite(self.fd, f"{step:>12}\n".encode(), 0)

    def touch(self) -> None:  # still alive (validating), same step
        os.utime(self.fd)


def inject_fault(fault: str, rank: int, step: int) -> None:
    """--set fault=RANK:STEP:KIND makes one rank fail on purpose (tests, fault-tolerance lessons)."""
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


def sync_buffers(model, source: int):
    """Copy BatchNorm running statistics from one training rank to all before
    validating. DDP does this every forward; the hand-written methods only average
    gradients, so each rank's running statistics drift apart."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=source)


def calibrate(model, cfg, device) -> float | None:
    """t_compute_only: the median time of a step with no synchronization at all (forward,
    backward, optimizer) on a copy of the model, with a random batch of the run's shape,
    so neither the real model, the data order nor the global RNG is touched."""
    if cfg.calibration_steps < 1:
        return None
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(12345)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator).to(device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=generator).to(device)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    timer, times = StepTimer(device), []
    for _ in range(cfg.calibration_steps + 1):  # the first is warm-up
        timer.start()
        with autocast(cfg, device):
            loss = F.cross_entropy(twin(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.mark("compute_s")
        times.append(timer.stop()["step_s"])
    del twin, optimizer
    return sorted(times[1:])[len(times[1:]) // 2]


def gather_timeline(intervals, rank) -> list[dict]:
    """Every rank's phase intervals of the timeline window, on rank 0 (wall-clock seconds)."""
    mine = [{"rank": rank, "step": step, "phase": phase, "start": start, "end": end}
            for step, phase, start, end in intervals]
    if not dist.is_initialized():
        return mine
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [event for events in everyone for event in events]


def gather_step_medians(steps, warmup) -> list[float]:
    """Every rank's median step time, so a straggler shows in the result."""
    measured = [s["step_s"] for s in steps[warmup:]] or [s["step_s"] for s in steps] or [0.0]
    median = sorted(measured)[len(measured) // 2]
    if not dist.is_initialized():
        return [median]
    medians = [None] * dist.get_world_size()
    dist.all_gather_object(medians, median)
    return medians


def build_result(cfg, world, device, steps, epochs, total_time, rank_medians, compute_only_s) -> dict:
    summary = summarize(steps, cfg.warmup_steps, cfg.global_batch, compute_only_s)
    val = [e["val_top1"] for e in epochs if "val_top1" in e]
    val5 = [e["val_top5"] for e in epochs if "val_top5" in e]
    summary.update(total_time_s=total_time, final_train_loss=epochs[-1]["train_loss"] if epochs else None,
                   best_val_top1=max(val) if val else None, best_val_top5=max(val5) if val5 else None,
                   rank_step_time_median_s=rank_medians)
    return {
        "schema": 1, "name": cfg.name, "strategy": cfg.strategy, "status": "ok",
        "config": cfg.to_dict(), "env": hardware.environment(), "world_size": world,
        "backend": cfg.backend if world > 1 else None, "device": str(device),
        "global_batch": cfg.global_batch, "summary": summary, "epochs": epochs, "steps": steps,
    }


if __name__ == "__main__":
    main(sys.argv[1])
