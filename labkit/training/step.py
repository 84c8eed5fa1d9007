"""One training step, the contract in twenty lines: every method plugs in here.

    forward + backward → strategy.sync_gradients → strategy.update → strategy.sync_parameters

Each phase is timed by `timer.mark`, so a strategy never measures itself.

Gradient accumulation (`--set accumulate=K`): a step is K micro-batches, each one's
forward + backward adding its gradient into .grad (loss ÷ K, so the sum is the mean over
all K); the first K−1 run inside `strategy.no_sync(model)`, so whatever a method hooks
into backward (DDP's all-reduce) waits for the last. One synchronization per step, on a
global batch K times larger — the trick of PyTorch's DDP `no_sync()` documentation.
"""

import contextlib

import torch
import torch.nn.functional as F

from labkit.training.evaluate import autocast
from labkit.training.faults import straggle


def train_step(model, micro_batches, strategy, optimizer, scaler, timer, cfg, device, memory=None) -> float:
    """Run one optimizer step on `micro_batches` (cfg.accumulate (images, labels) pairs, drawn
    lazily); return this rank's mean loss over them (0.0 on a rank that computes nothing)."""
    loss_value = 0.0
    for index, (images, labels) in enumerate(micro_batches):
        if images is None:  # a dedicated parameter server has no data
            continue
        layout = torch.channels_last if cfg.channels_last else torch.preserve_format
        images = images.to(device, getattr(torch, cfg.dtype), non_blocking=True, memory_format=layout)
        labels = labels.to(device, non_blocking=True)
        timer.mark("data_s")
        last = index == cfg.accumulate - 1
        # forward too: DDP decides in forward whether the coming backward reduces
        with contextlib.nullcontext() if last else strategy.no_sync(model):
            with autocast(cfg, device):
                loss = F.cross_entropy(model(images), labels)
            scaler.scale(loss / cfg.accumulate).backward()  # DDP's all-reduce runs in here, hooked into autograd
        loss_value += loss.item() / cfg.accumulate  # waits for the device: a host-device sync point
        straggle(cfg, strategy.rank, timer.so_far_s())  # --set straggler: this rank slowed
        timer.mark("compute_s")
    strategy.sync_gradients(model)  # communication before the update (all-reduce, push)
    timer.mark("sync_s")
    strategy.update(optimizer, scaler)  # the optimizer step, wherever this method takes it
    timer.mark("optimizer_s")
    strategy.sync_parameters(model)  # communication after the update (pull)
    timer.mark("sync_s")
    if memory is not None:  # the memory count (memory.py), once a run: here the gradients still exist
        memory.count(model, optimizer, strategy)
    optimizer.zero_grad(set_to_none=True)  # None, not zeros: the next backward writes fresh tensors
    return loss_value
