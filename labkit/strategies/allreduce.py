"""allreduce — average gradients by hand with one all-reduce per parameter.

Idea (PyTorch's "Writing Distributed Applications" tutorial): after backward, every
rank holds gradients of its own shard of the batch. Summing them across ranks and
dividing by the world size gives the gradient of the whole global batch, so every
rank then takes the identical optimizer step.

Communication: one blocking all-reduce per parameter tensor (161 for ResNet-50),
issued only after the whole backward pass: nothing overlaps with compute, and
small tensors pay the per-collective latency. Compare with `bucketed` (fewer,
larger collectives) and `ddp` / `overlap` (communication hidden behind backward).
"""

import torch.distributed as dist

from .base import Strategy, grads_of, nbytes


class AllReduce(Strategy):
    def sync_gradients(self, model):
        for grad in grads_of(model):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= self.world
            self.count_all_reduce(nbytes(grad))
