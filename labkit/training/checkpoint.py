"""Training state saved in checkpoint.pt, and restored on --resume or a torchrun restart.

Everything is stored as tensors and plain Python types so `torch.load(weights_only=True)`
can read it back without unpickling arbitrary objects. The data order needs no state of
its own: DistributedSampler's shuffle is a function of (seed, epoch), so (epoch, step in
epoch) says exactly which batches are left.

The per-step records grow with the run, so they are not rewritten into every checkpoint:
each save appends only the new ones to steps.jsonl and the checkpoint notes how many
lines belong to it (a line written after the last checkpoint is dropped on resume).
Loaded onto the CPU whatever the device: RNG states must be CPU tensors, and
load_state_dict copies weights and optimizer state to wherever the model lives.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    steps: list = field(default_factory=list)  # per-step records so far (saved in steps.jsonl)
    steps_saved: int = 0  # how many of them steps.jsonl holds
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


def save(path, net, optimizer, scaler, state: TrainState, config: dict, strategy_states: list | None = None,
         full_state: tuple[dict, dict] | None = None) -> None:
    """Append the new step records to steps.jsonl, then write checkpoint.pt atomically.
    `full_state`: (model, optimizer) state as the method gathered it (a sharded model's full
    tensors: Strategy.full_state); default their own state_dict()."""
    path = Path(path)
    model_state, optimizer_state = full_state or (net.state_dict(), optimizer.state_dict())
    with open(path.with_name("steps.jsonl"), "a") as steps_file:
        steps_file.writelines(json.dumps(record) + "\n" for record in state.steps[state.steps_saved:])
    state.steps_saved = len(state.steps)
    save_checkpoint(path, {"model": model_state, "optimizer": optimizer_state,
                           "scaler": scaler.state_dict(), "epoch": state.epoch, "step": state.global_step,
                           "state": {k: v for k, v in asdict(state).items() if k != "steps"},
                           "strategy": strategy_states or [], "rng": rng_states(), "config": config})


def restore(path, net, optimizer, scaler, strategy=None, rank: int = 0) -> TrainState:
    """Load checkpoint.pt into model, optimizer, scaler (and this rank's strategy state)."""
    path = Path(path)
    checkpoint = load_checkpoint(path, map_location="cpu")
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if strategy is not None and checkpoint.get("strategy"):
        strategy.load_state_dict(checkpoint["strategy"][strategy.rank])
    set_rng_states(checkpoint["rng"])
    state = TrainState(**checkpoint["state"])
    steps_file = path.with_name("steps.jsonl")
    lines = steps_file.read_text().splitlines()[:state.steps_saved] if steps_file.exists() else []
    state.steps = [json.loads(line) for line in lines]
    if rank == 0:  # the one writer of steps.jsonl drops records past the checkpoint
        steps_file.write_text("".join(line + "\n" for line in lines))
    return state
