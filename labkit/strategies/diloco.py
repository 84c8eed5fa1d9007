"""diloco — local SGD with an outer optimizer: H inner steps, then one Nesterov step on the average.

Idea (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language
Models", 2023): every rank takes H inner steps on its own (`--set sync_every=H`; the paper
uses H = 500 with an inner AdamW). Then the ranks all-reduce a pseudo-gradient, the
parameters at the last sync minus the parameters now (how far the inner steps moved them),
average it, and an outer SGD with Nesterov momentum (lr 0.7, momentum 0.9 in the paper)
steps the synced parameters along it. Local SGD (`localsgd`) is the special case of an
outer SGD with lr 1 and no momentum: the average itself. So with H = 1, `inner=sgd`,
`outer_lr=1` and `outer_momentum=0` DiLoCo makes exactly DDP's update.

Options: `inner` (sgd: the run's own optimizer with its lr schedule, SGD unless `--set
optimizer=adamw`; adamw: an AdamW of diloco's own at `inner_lr` following the run's schedule,
with the run's weight decay, as in the paper),
`outer_lr`, `outer_momentum` (Nesterov when above 0). The paper's 8 workers matched
synchronous training with 500× less communication on a language model; the lab's runs are
hundreds of steps, hence a default H of 5 (one sync in H, as `localsgd`).

Communication: nothing on H − 1 steps, then one all-reduce of the pseudo-gradient (the
size of the model) and one of BatchNorm's running statistics (averaged, as `localsgd`
does): about 1/H of DDP's bytes per step. Each rank keeps its own inner optimizer state;
the outer momentum is the same on every rank, and a checkpoint keeps it with the synced
parameters and each rank's own model and inner state.
Compare with `localsgd` at the same H, and with `ddp`. The production version, with
fault tolerance and streaming (a fragment of the model at a time): pytorch/torchft's DiLoCo
(torchft/local_sgd.py).
"""

import torch
import torch.distributed as dist

from .base import About, Option, Strategy, flatten, optimizer_state_tensors
from .localsgd import SYNC_EVERY, average_buffers, load_local_state, local_state, on_cpu, period_refusal


def refuse(cfg, o) -> str:
    if o.outer_lr <= 0 or not 0 <= o.outer_momentum < 1 or o.inner_lr <= 0:
        return (f"diloco needs outer_lr > 0, 0 <= outer_momentum < 1 and inner_lr > 0 "
                f"(got {o.outer_lr}, {o.outer_momentum}, {o.inner_lr})")
    return period_refusal(o.sync_every)


class DiLoCo(Strategy):
    about = About(
        options=(SYNC_EVERY,
                 Option("inner", "sgd", "inner optimizer: the run's own (--set optimizer=), or AdamW at inner_lr "
                        "as in the paper", ("sgd", "adamw")),
                 Option("inner_lr", 1e-3, "AdamW's learning rate (inner=adamw; scaled by the run's warm-up)"),
                 Option("outer_lr", 0.7, "outer SGD's learning rate on the averaged pseudo-gradient"),
                 Option("outer_momentum", 0.9, "outer SGD's Nesterov momentum (0: plain SGD)")),
        label=lambda cfg, o: f"{cfg.strategy_name} H={o.sync_every}" + (" adamw" if o.inner == "adamw" else ""),
        sync_every=lambda cfg, o: o.sync_every, refuse=refuse,
        cost_model_note="it communicates on one step in H: a median over single steps counts the silent ones")

    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.options.inner == "adamw":
            self.inner = torch.optim.AdamW(self.params, lr=self.options.inner_lr, weight_decay=self.cfg.weight_decay)
        else:
            self.inner = optimizer
        # The outer optimizer steps the model's own parameters, with the pseudo-gradient as
        # their .grad (torchft does the same): its state is keyed to them, like any optimizer's.
        momentum = self.options.outer_momentum
        self.outer = torch.optim.SGD(self.params, lr=self.options.outer_lr, momentum=momentum, nesterov=momentum > 0)
        if momentum > 0:  # made now, not at the first sync, so the memory count sees it (0·μ + g = g: same step)
            for p in self.params:
                self.outer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.model, self.optimizer = model, self.inner  # what local_state saves: this rank's own
        self.schedule = optimizer  # the run's optimizer carries the lr schedule (warm-up)
        self.steps = 0
        self.synced = flatten(self.params).detach().clone()  # the parameters at the last sync
        return model

    def update(self, optimizer, scaler=None):
        if self.inner is not optimizer:  # AdamW at inner_lr, times the run's warm-up factor
            for group in self.inner.param_groups:
                group["lr"] = self.options.inner_lr * self.schedule.param_groups[0]["lr"] / self.cfg.learning_rate
        super().update(self.inner, scaler)

    def sync_parameters(self, model):  # after every rank's own inner step
        self.steps += 1
        if self.steps % self.options.sync_every:
            return
        with torch.no_grad():
            pseudo_grad = self.synced - flatten(self.params)  # how far this rank's H steps moved
            dist.all_reduce(pseudo_grad)
            pseudo_grad /= self.world
            # The outer step starts from the synced parameters, along the averaged pseudo-gradient.
            numels = [p.numel() for p in self.params]
            for p, synced, step in zip(self.params, self.synced.split(numels), pseudo_grad.split(numels)):
                p.copy_(synced.view_as(p))
                p.grad = step.view_as(p)
            self.outer.step()  # the loop's zero_grad clears these .grad after the step
            self.synced = flatten(self.params).detach().clone()
        average_buffers(model, self.world)

    def held_tensors(self):  # for the memory count: the synced copy, the outer momentum, AdamW's moments
        state = optimizer_state_tensors(self.outer)
        if self.inner is not self.schedule:  # its own AdamW: the loop's optimizer holds nothing, this one two moments
            state += optimizer_state_tensors(self.inner)
        return {"params": [self.synced], "optimizer_state": state}

    def state_dict(self):
        return {**local_state(self), **on_cpu({"synced": self.synced, "outer": self.outer.state_dict()})}

    def load_state_dict(self, state):  # between syncs this rank's model is not the synced one: both come back
        self.steps = load_local_state(self, state)
        self.synced = state["synced"].to(self.synced)
        self.outer.load_state_dict(state["outer"])
