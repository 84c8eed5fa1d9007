"""Training state saved in checkpoint.pt, and restored on --resume or a torchrun restart.

Everything is stored as tensors and plain Python types so `torch.load(weights_only=True)`
can read it back without unpickling arbitrary objects. The data order needs no state of
its own: DistributedSampler's shuffle is a function of (seed, epoch), so (epoch, step in
epoch) says exactly which batches are left.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from labkit.files import load_checkpoint, save_checkpoint


@dataclass
class TrainState:
    """Where training stands."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # this epoch so far, for its mean train loss
    seen: int = 0
    steps: list = field(default_factory=list)  # per-step records so far
    epochs: list = field(default_factory=list)  # per-epoch records so far


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save(path, net, optimizer, scaler, state: TrainState, config: dict) -> None:
    save_checkpoint(path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict(), "epoch": state.epoch, "step": state.global_step,
                           "state": asdict(state), "rng": rng_states(), "config": config})


def restore(path, net, optimizer, scaler, device) -> TrainState:
    checkpoint = load_checkpoint(path, map_location=device)
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"])
    return TrainState(**checkpoint["state"])
