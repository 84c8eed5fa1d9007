"""t_compute_only: how long this rank's step takes with no synchronization at all.

Measured before training on a copy of the model (forward, backward, optimizer) with a
random batch of the run's shape, so neither the real model, the data order nor the
global RNG is touched. The exposed-communication figure compares against it.

One measurement says nothing about its own noise, and on a shared machine (4 ranks on
2 cores, other jobs beside them) the same work took 0.39 s in one job and 0.68 s in
another. So the calibration is repeated: one warm-up step (first-call allocations),
then `CALIBRATION_ROUNDS` rounds of `calibration_steps` steps each. The median over all
steps is t_compute_only; the spread of the rounds' medians (max − min) is the noise floor
of every figure derived from it (`exposed_comm_noise_s`). Every step here is a step the
run does not train, so the cpu profile takes 1 step a round: 4 steps in all."""

import copy

import torch
import torch.nn.functional as F

from labkit.training.evaluate import autocast
from labkit.training.timing import StepTimer

CALIBRATION_ROUNDS = 3


def calibrate(model, cfg, device, rounds: int = CALIBRATION_ROUNDS) -> dict | None:
    """{"median_s", "round_medians_s", "spread_s", "steps_s"} of the compute-only step
    (None when calibration_steps is 0). timing.summarize reads it."""
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
    timer = StepTimer(device)

    def step_s() -> float:
        timer.start()
        for _ in range(cfg.accumulate):  # a step of the run holds accumulate micro-batches
            with autocast(cfg, device):
                loss = F.cross_entropy(twin(images), labels)
            (loss / cfg.accumulate).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.mark("compute_s")
        return timer.stop()["step_s"]

    step_s()  # warm-up: the first step allocates (and, on a GPU, picks its kernels)
    rounds_s = [[step_s() for _ in range(cfg.calibration_steps)] for _ in range(rounds)]
    del twin, optimizer
    every = sorted(t for times in rounds_s for t in times)
    medians = [sorted(times)[len(times) // 2] for times in rounds_s]
    return {"median_s": every[len(every) // 2], "round_medians_s": medians,
            "spread_s": max(medians) - min(medians), "steps_s": [t for times in rounds_s for t in times]}
