"""ps_sharded — a parameter server sharded across every rank (BytePS, ZeRO-style).

Idea: instead of one server holding all parameters, each of the n ranks owns 1/n
of the flat parameter vector and the optimizer state for it. A step is:
reduce-scatter the gradients (each owner receives the sum for its slice), every
owner steps its slice, all-gather the parameters so every rank has the whole model.

Communication: reduce-scatter + all-gather, on NCCL the two halves of its ring all-reduce,
2(n−1)/n·S per rank — while `ps` moves (n−1)·S through rank 0 alone. gloo runs its
reduce-scatter as a whole all-reduce and keeps a slice, so there the pair carries 1.5× a
ring all-reduce's bytes (the loop counts what the backend runs: docs/EXPERIMENT_GUIDE.md).
The optimizer state (SGD's momentum, AdamW's two moments) is split n ways too: that is
ZeRO stage 1's memory saving.
"""

import math

import torch
import torch.distributed as dist

from .base import About, Strategy, flatten, optimizer_state_tensors, unflatten_into


def refuse(cfg, o) -> str:
    # Each rank's GradScaler would see only its shard's gradients: ranks could skip
    # different steps and their loss scales drift apart.
    if cfg.amp == "fp16":
        return ("ps_sharded does not support amp=fp16 (each rank's loss scaler sees only its "
                "shard, so ranks could skip different steps); use --set amp=bf16")
    return ""


def own_passes(params, rank, world, o) -> dict:
    """Its own passes in a step (the cost model's γ term) over the padded flat buffer: flatten, pad
    and ÷n write fresh buffers; the copy out of the gathered parameters is in place."""
    padded = math.ceil(sum(p.numel() for p in params) / world) * world * params[0].element_size()
    return {"fresh": [3, 3 * padded], "in_place": [1, padded]}


class ShardedServer(Strategy):
    about = About(refuse=refuse, passes=own_passes,
                  # what is left once γ counts its passes (docs/BENCHMARKS.md):
                  cost_model_note="the α–β line falls short of the benchmark's own 45 MB reduce-scatter and "
                                  "all-gather (bench ms)")

    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.params)
        self.shard_len = math.ceil(total / self.world)  # pad so every shard is equal
        self.padded = self.shard_len * self.world
        # flatten, not parameters_to_vector: that .view()s each parameter (fails on channels_last)
        flat = self.pad(flatten([p.detach() for p in self.params]))
        self.shard = torch.nn.Parameter(flat[self.rank * self.shard_len:(self.rank + 1) * self.shard_len].clone())
        # This rank's optimizer only ever sees its own slice, so it keeps 1/n of the state. Built
        # as ZeroRedundancyOptimizer builds its local one: the loop's optimizer class and its param
        # group's hyperparameters (SGD's momentum, AdamW's betas and weight decay), only the params
        # replaced. (`**optimizer.defaults` is not a constructor's keywords: AdamW refuses its own.)
        (group,) = optimizer.param_groups  # one group: the flat shard mixes every parameter
        self.shard_optimizer = type(optimizer)([{**group, "params": [self.shard]}])
        return model

    # Every rank steps its own shard: a checkpoint keeps each rank's optimizer state, not just rank 0's.
    def state_dict(self):
        return {"shard_optimizer": self.shard_optimizer.state_dict()}

    def load_state_dict(self, state):
        self.shard_optimizer.load_state_dict(state["shard_optimizer"])

    # The memory count: besides the full model and its gradients, this rank keeps its shard,
    # the shard's gradient and 1/n of the optimizer state (the shard optimizer's).
    def held_tensors(self):
        return {"params": [self.shard], "grads": [self.shard.grad],
                "optimizer_state": optimizer_state_tensors(self.shard_optimizer)}

    def pad(self, flat):
        return torch.nn.functional.pad(flat, (0, self.padded - flat.numel()))

    def sync_gradients(self, model):  # reduce-scatter: each owner gets the sum of its slice
        grads = self.pad(flatten([p.grad for p in self.params])) / self.world
        self.shard.grad = torch.empty_like(self.shard)
        dist.reduce_scatter_single(self.shard.grad, grads, op=dist.ReduceOp.SUM)

    def update(self, optimizer, scaler=None):
        for group in self.shard_optimizer.param_groups:  # follow the loop's lr schedule (warm-up)
            group["lr"] = optimizer.param_groups[0]["lr"]
        super().update(self.shard_optimizer, scaler)

    def sync_parameters(self, model):  # all-gather: everyone gets every updated slice
        flat = torch.empty(self.padded, dtype=self.shard.dtype, device=self.shard.device)
        dist.all_gather_single(flat, self.shard.detach())
        with torch.no_grad():
            unflatten_into(flat, self.params)
