"""t_compute_only: how long this rank's step takes with no synchronization at all.

Measured before training on a copy of the model (forward, backward, optimizer) with a
random batch of the run's shape, so neither the real model, the data order nor the
global RNG is touched. The exposed-communication figure compares against it."""

import copy

import torch
import torch.nn.functional as F

from labkit.training.evaluate import autocast
from labkit.training.timing import StepTimer


def calibrate(model, cfg, device) -> float | None:
    """The median compute-only step time in seconds (None when calibration_steps is 0)."""
    if cfg.calibration_steps < 1:
        return None
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(12345)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
    images = images.to(device, getattr(torch, cfg.dtype))
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
