"""ps_sharded — a parameter server sharded across every rank (BytePS, ZeRO-style).

Idea: instead of one server holding all parameters, each of the n ranks owns 1/n
of the flat parameter vector and the optimizer state for it. A step is:
reduce-scatter the gradients (each owner receives the sum for its slice), every
owner steps its slice, all-gather the parameters so every rank has the whole model.

Communication: reduce-scatter + all-gather = exactly the two halves of a ring
all-reduce, 2(n−1)/n·S per rank — while `ps` moves (n−1)·S through rank 0 alone.
The optimizer state (momentum) is split n ways too: that is ZeRO stage 1's memory saving.
"""

import math

import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector

from .base import Strategy, flatten, nbytes, unflatten_into


class ShardedServer(Strategy):
    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.params)
        self.shard_len = math.ceil(total / self.world)  # pad so every shard is equal
        self.padded = self.shard_len * self.world
        flat = self.pad(parameters_to_vector(self.params).detach())
        mine = flat[self.rank * self.shard_len:(self.rank + 1) * self.shard_len]
        self.shard = torch.nn.Parameter(mine.clone())
        # This rank's optimizer only ever sees its own slice, so it keeps 1/n of the state.
        self.shard_optimizer = type(optimizer)([self.shard], **optimizer.defaults)
        return model

    def pad(self, flat):
        return torch.nn.functional.pad(flat, (0, self.padded - flat.numel()))

    def sync_gradients(self, model):  # reduce-scatter: each owner gets the sum of its slice
        grads = self.pad(flatten([p.grad for p in self.params])) / self.world
        self.shard.grad = torch.empty_like(self.shard)
        dist.reduce_scatter_tensor(self.shard.grad, grads, op=dist.ReduceOp.SUM)
        ring = (self.world - 1) / self.world * nbytes(grads)
        self.count(ring, ring)

    def update(self, optimizer, scaler=None):
        super().update(self.shard_optimizer, scaler)

    def sync_parameters(self, model):  # all-gather: everyone gets every updated slice
        flat = torch.empty(self.padded, dtype=self.shard.dtype, device=self.shard.device)
        dist.all_gather_into_tensor(flat, self.shard.detach())
        with torch.no_grad():
            unflatten_into(flat, self.params)
        ring = (self.world - 1) / self.world * nbytes(flat)
        self.count(ring, ring)
