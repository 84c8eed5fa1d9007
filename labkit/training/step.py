"""One training step, the contract in twenty lines: every method plugs in here.

    forward + backward → strategy.sync_gradients → strategy.update → strategy.sync_parameters

Each phase is timed by `timer.mark`, so a strategy never measures itself.
"""

import torch
import torch.nn.functional as F

from labkit.training.evaluate import autocast


def train_step(model, batch, strategy, optimizer, scaler, timer, cfg, device) -> float:
    """Run one optimizer step; return this rank's loss (0.0 on a rank that computes nothing)."""
    images, labels = batch
    loss_value = 0.0
    if images is not None:  # a dedicated parameter server has no data
        layout = torch.channels_last if cfg.channels_last else torch.preserve_format
        images = images.to(device, getattr(torch, cfg.dtype), non_blocking=True, memory_format=layout)
        labels = labels.to(device, non_blocking=True)
        timer.mark("data_s")
        with autocast(cfg, device):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()  # DDP's all-reduce runs in here, hooked into autograd
        loss_value = loss.item()  # waits for the device: a host-device sync point
        timer.mark("compute_s")
    strategy.sync_gradients(model)  # communication before the update (all-reduce, push)
    timer.mark("sync_s")
    strategy.update(optimizer, scaler)  # the optimizer step, wherever this method takes it
    timer.mark("optimizer_s")
    strategy.sync_parameters(model)  # communication after the update (pull)
    timer.mark("sync_s")
    optimizer.zero_grad(set_to_none=True)  # None, not zeros: the next backward writes fresh tensors
    return loss_value
