"""localsgd — every rank trains on its own for H steps, then the ranks average their models.

Idea (Stich, "Local SGD Converges Fast and Communicates Little", 2018; Lin et al., "Don't
Use Large Mini-Batches, Use Local SGD", 2018): skip the gradient all-reduce. Each rank
steps its own optimizer on its own gradients, so the ranks' models drift apart; every H
steps (`--set sync_every=H`) one all-reduce replaces every rank's parameters with their
average. With H = 1 and plain SGD (momentum included: it is linear in the gradients) the
average after each step is exactly DDP's update (not with `--set optimizer=adamw`: each
rank's moments see only its own gradients, and Adam's step is not linear in them); larger H
divides the bytes by H and lets the models wander between syncs, which costs accuracy as H grows.

What is averaged: the parameters, by PyTorch's own model averager
(torch.distributed.algorithms.model_averaging.averagers.PeriodicModelAverager: one flat
all-reduce); BatchNorm's running statistics, averaged by us on the same steps (the
averager takes parameters only), so the synced model is one model. Each rank keeps its
own momentum (Lin et al.'s "local momentum"): it is not averaged, and it is not sent.

Communication: nothing on H − 1 steps, then one all-reduce of the whole model (and one
of the BatchNorm buffers): about 1/H of DDP's bytes per step. Between syncs each rank
holds its own model: validation that falls between syncs scores each rank's model on its
own share of the val set (choose H dividing an epoch's steps — 10 on the cpu profile —
to validate the averaged one), and a checkpoint keeps every rank's momentum (and its model,
between syncs).
Compare with `ddp` (H = 1, every step) and `diloco` (an outer optimizer on the average).
The production version: pytorch/torchft's LocalSGD (torchft/local_sgd.py).
"""

import warnings

import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

from .base import About, Option, Strategy, flatten, unflatten_into

SYNC_EVERY = Option("sync_every", 5, "H: steps between synchronizations (1: every step, as DDP)")


def period_refusal(every) -> str:
    return f"sync_every={every}: H must be at least 1 (steps between synchronizations)" if every < 1 else ""


class LocalSGD(Strategy):
    about = About(options=(SYNC_EVERY,), label=lambda cfg, o: f"{cfg.strategy_name} H={o.sync_every}",
                  sync_every=lambda cfg, o: o.sync_every, refuse=lambda cfg, o: period_refusal(o.sync_every),
                  cost_model_note="it communicates on one step in H: a median over single steps counts the silent ones")

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        every = self.options.sync_every
        # Called after every step, the averager averages on its calls number warmup, warmup + H, ...
        # (0-based): warmup_steps = H − 1 puts the syncs on steps H, 2H, ... (1-based), the periods
        # the summary measures over, and no sync before the first H steps.
        with warnings.catch_warnings():  # H = 1 warns "use DDP instead": here it proves they agree
            warnings.filterwarnings("ignore", message="When period is 1")
            self.averager = PeriodicModelAverager(period=every, warmup_steps=every - 1)
        return model

    @property
    def steps(self):
        return self.averager.step

    def sync_parameters(self, model):  # after every rank's own optimizer step
        params = [p for p in model.parameters() if p.grad is not None]  # what the averager averages
        self.averager.average_parameters(params)  # one flat all-reduce of the parameters, on sync steps
        if self.averager.step % self.options.sync_every == 0:  # it has just averaged them
            average_buffers(model, self.world)

    def state_dict(self):
        return local_state(self)

    def load_state_dict(self, state):
        self.averager.step = load_local_state(self, state)


def average_buffers(model, world):
    """BatchNorm's running mean and variance, averaged over the ranks (one all-reduce).
    The step counter (num_batches_tracked, an integer) is the same on every rank."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = flatten(buffers)
    dist.all_reduce(flat)
    flat /= world
    unflatten_into(flat, buffers)


def local_state(strategy) -> dict:
    """What a checkpoint must keep of one rank: its own optimizer (momentum, never averaged),
    its own model when between syncs (at a sync every rank holds rank 0's), and the step
    count that places the next sync."""
    between_syncs = strategy.steps % strategy.options.sync_every != 0
    return on_cpu({"steps": strategy.steps, "model": strategy.model.state_dict() if between_syncs else None,
                   "optimizer": strategy.optimizer.state_dict()})


def on_cpu(state):
    """`state` with every tensor on the CPU: the checkpoint gathers it to rank 0 by pickling,
    and a CUDA tensor would unpickle there onto its own rank's GPU."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: on_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(value) for value in state)
    return state


def load_local_state(strategy, state) -> int:
    """On a resume, after the loop loaded rank 0's model and optimizer: this rank's own back (its
    model only if saved between syncs); the steps done so far."""
    if state["model"] is not None:
        strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    return state["steps"]
