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

The model is saved whole, as one plain process holds it (inside the method's `whole_model`; a
DTensor shard, as FSDP2 keeps them, is gathered), so checkpoint.pt reads the same whatever the
method. It is restored into the plain model before the method's prepare; the optimizer (cut to
its shards where its parameters are sharded) and the method's own state after it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

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


def whole_state(net, optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state) as one plain process holds them, copied to the CPU (so they
    outlive the method's `whole_model`, which may free its gathered layers). Every rank calls it:
    a sharded tensor is gathered whole (DTensor.full_tensor is a collective)."""
    def whole(value):
        if isinstance(value, DTensor):
            return value.full_tensor().cpu()
        return value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value
    model_state = {name: whole(value) for name, value in net.state_dict().items()}
    optimizer_state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: copy
    optimizer_state["state"] = {index: {k: whole(v) for k, v in values.items()}
                                for index, values in optimizer_state["state"].items()}
    return model_state, optimizer_state


def save(path, model_state: dict, optimizer_state: dict, scaler, state: TrainState, config: dict,
         strategy_states: list | None = None) -> None:
    """Append the new step records to steps.jsonl, then write checkpoint.pt atomically."""
    path = Path(path)
    with open(path.with_name("steps.jsonl"), "a") as steps_file:
        steps_file.writelines(json.dumps(record) + "\n" for record in state.steps[state.steps_saved:])
    state.steps_saved = len(state.steps)
    save_checkpoint(path, {"model": model_state, "optimizer": optimizer_state,
                           "scaler": scaler.state_dict(), "epoch": state.epoch, "step": state.global_step,
                           "state": {k: v for k, v in asdict(state).items() if k != "steps"},
                           "strategy": strategy_states or [], "rng": rng_states(), "config": config})


def load(path) -> dict:
    """checkpoint.pt, on the CPU."""
    return load_checkpoint(Path(path), map_location="cpu")


def restore_model(checkpoint: dict, model) -> None:
    """The checkpoint's whole model, into the plain model before the method's prepare: whatever
    the method builds from it (DDP, shards, a synced copy) starts from the checkpoint."""
    model.load_state_dict(checkpoint["model"])


def restore(checkpoint: dict, path, optimizer, scaler, strategy=None, rank: int = 0) -> TrainState:
    """The rest, after the method's prepare: the optimizer (a sharded parameter's state cut to its
    shard), the scaler and this rank's own strategy state, which its load_state_dict applies at once."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    for group in optimizer.param_groups:  # a sharded parameter's state (momentum, moments) is cut the same way
        for param in group["params"]:
            if param in optimizer.state:
                optimizer.state[param] = {k: cut_like(v, param) if torch.is_tensor(v) and v.shape == param.shape else v
                                          for k, v in optimizer.state[param].items()}
    scaler.load_state_dict(checkpoint["scaler"])
    if strategy is not None and checkpoint.get("strategy"):
        strategy.load_state_dict(checkpoint["strategy"][rank])
    set_rng_states(checkpoint["rng"])
    state = TrainState(**checkpoint["state"])
    steps_file = Path(path).with_name("steps.jsonl")
    lines = steps_file.read_text().splitlines()[:state.steps_saved] if steps_file.exists() else []
    state.steps = [json.loads(line) for line in lines]
    if rank == 0:  # the one writer of steps.jsonl drops records past the checkpoint
        steps_file.write_text("".join(line + "\n" for line in lines))
    return state


def cut_like(whole, like):
    """`whole` as `like` holds it: this rank's shard of it where `like` is a DTensor (every rank
    has the whole tensor, so each takes its slice: no communication), else itself."""
    if isinstance(like, DTensor):
        return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return whole
