"""allreduce — average gradients by hand with one all-reduce per parameter.

Idea (PyTorch's "Writing Distributed Applications" tutorial): after backward, every
rank holds the gradient of the loss on its own slice of the batch. Summing them and
dividing by the world size gives the gradient of the loss averaged over the global
batch — for layers that treat each image on its own; BatchNorm normalises each slice
with that slice's statistics. Every rank then takes the same step: DDP's, up to
float32 rounding (each method sums in its own order; in float64 they agree to ~1e-12).

Communication: one blocking all-reduce per parameter tensor (161 for ResNet-50),
issued only after the whole backward pass: nothing overlaps with compute, and
small tensors pay the per-collective latency. Compare with `bucketed` (fewer,
larger collectives) and `ddp` / `overlap` (communication hidden behind backward).
"""

import torch.distributed as dist

from .base import About, Strategy, grads_of, nbytes


class AllReduce(Strategy):
    # its own passes (the cost model's γ term): the ÷n of each gradient, in place
    about = About(passes=lambda params, rank, world, o: {"in_place": [len(params), sum(map(nbytes, params))]})

    def sync_gradients(self, model):
        for grad in grads_of(model):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= self.world
