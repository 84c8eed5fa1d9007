"""ps_sharded — a parameter server sharded across every rank (BytePS, ZeRO-style).

Idea: instead of one server holding all parameters, each of the n ranks owns 1/n
of the flat parameter vector and the optimizer state for it. A step is:
reduce-scatter the gradients (each owner receives the sum for its slice), every
owner steps its slice, all-gather the parameters so every rank has the whole model.

Communication: reduce-scatter + all-gather = exactly the two halves of a ring
all-reduce, 2(n−1)/n·S per rank — while `ps` moves (n−1)·S through rank 0 alone.
The optimizer state (SGD's momentum, AdamW's two moments) is split n ways too: that is
ZeRO stage 1's memory saving.
"""

import math

import torch
import torch.distributed as dist

from labkit.errors import ConfigError

from .base import Strategy, flatten, nbytes, optimizer_state_tensors, unflatten_into


class ShardedServer(Strategy):
    # its passes over the flat buffer are counted (γ); what is left (docs/BENCHMARKS.md):
    cost_model_note = "the α–β line falls short of the benchmark's own 45 MB reduce-scatter and all-gather (bench ms)"

    @classmethod
    def check(cls, cfg):
        # Each rank's GradScaler would see only its shard's gradients: ranks could skip
        # different steps and their loss scales drift apart.
        if cfg.amp == "fp16":
            raise ConfigError("ps_sharded does not support amp=fp16 (each rank's loss scaler sees only its "
                                  "shard, so ranks could skip different steps); use --set amp=bf16")

    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.params)
        self.shard_len = math.ceil(total / self.world)  # pad so every shard is equal
        self.padded = self.shard_len * self.world
        # flatten, not parameters_to_vector: that .view()s each parameter (fails on channels_last)
        flat = self.pad(flatten([p.detach() for p in self.params]))
        mine = flat[self.rank * self.shard_len:(self.rank + 1) * self.shard_len]
        self.shard = torch.nn.Parameter(mine.clone())
        # This rank's optimizer only ever sees its own slice, so it keeps 1/n of the state. Built
        # as ZeroRedundancyOptimizer builds its local one: the loop's optimizer class and its param
        # group's hyperparameters (SGD's momentum, AdamW's betas and weight decay), only the params
        # replaced. (`**optimizer.defaults` is not a constructor's keywords: AdamW refuses its own.)
        (group,) = optimizer.param_groups  # one group: the flat shard mixes every parameter
        self.shard_optimizer = type(optimizer)([{**group, "params": [self.shard]}])
        if getattr(self, "_restored", None):  # a checkpoint was loaded before prepare
            self.load_state_dict(self._restored)
        return model

    # Every rank steps its own shard: a checkpoint keeps each rank's optimizer state, not just rank 0's.
    def state_dict(self):
        return {"shard_optimizer": self.shard_optimizer.state_dict()}

    def load_state_dict(self, state):
        if not hasattr(self, "shard_optimizer"):
            self._restored = state  # prepare() has not built the shard yet
            return
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
        self.wire.local(3 * nbytes(grads), passes=3, fresh=True)  # the γ term: flatten, pad, ÷n

    def update(self, optimizer, scaler=None):
        for group in self.shard_optimizer.param_groups:  # follow the loop's lr schedule (warm-up)
            group["lr"] = optimizer.param_groups[0]["lr"]
        super().update(self.shard_optimizer, scaler)

    def sync_parameters(self, model):  # all-gather: everyone gets every updated slice
        flat = torch.empty(self.padded, dtype=self.shard.dtype, device=self.shard.device)
        dist.all_gather_single(flat, self.shard.detach())
        with torch.no_grad():
            unflatten_into(flat, self.params)
        self.wire.local(nbytes(flat))  # the copy out, in place
