"""overlap — start each bucket's all-reduce during backward, as soon as it is ready.

Idea (DDP's central trick, written by hand): backward computes gradients from the
last layer to the first. A hook on every parameter (`register_post_accumulate_grad_hook`)
counts the gradients that have arrived in its bucket; when the bucket is complete
its all-reduce is launched asynchronously, and backward carries on computing the
earlier layers while the network moves the bytes. Before the optimizer step we
only wait for the handles still in flight.

Gradient accumulation (`--set accumulate=K`): inside `no_sync` the hooks launch nothing,
so the first K−1 backward passes only add into .grad; the last one's hooks fire on the
summed gradients and reduce them once (DDP's `no_sync()`, by hand).

Communication: the bytes of `bucketed`, started during backward: the blocking sync
time shrinks; whether the exposed communication shrinks too depends on spare
resources — on CPU ranks sharing cores the all-reduce competes with backward (compare
its `exposed_comm_s` with `bucketed`'s). Every rank runs the
same graph, so the hooks fire and the collectives start in the same order everywhere.
"""

import contextlib
import functools

import torch.distributed as dist

from .base import About, Strategy, flatten, unflatten_into
from .buckets import BUCKET_OPTIONS, compressed_label, make_buckets, to_wire


class Overlap(Strategy):
    about = About(options=BUCKET_OPTIONS, label=compressed_label,
                  overlaps_backward=True)  # all-reduces launched from autograd hooks
    accumulating = False  # True inside no_sync: a micro-batch before the last

    def prepare(self, model, optimizer):
        self.buckets = make_buckets(model.parameters(), self.options.bucket_mb)
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.arrived = [0] * len(self.buckets)
        self.in_flight = []  # (bucket index, the buffer sent, async work handle)
        for index, bucket in enumerate(self.buckets):
            for p in bucket:
                p.register_post_accumulate_grad_hook(functools.partial(self.on_grad_ready, index))
        return model

    def on_grad_ready(self, index, param):  # called by autograd, inside backward
        if self.accumulating:  # not the last micro-batch: its gradient stays in .grad, to be summed
            return
        self.arrived[index] += 1
        if self.arrived[index] == len(self.buckets[index]):
            self.launch(index)

    def launch(self, index):
        sent = to_wire(flatten([p.grad for p in self.buckets[index]]), self.world, self.options.compress)
        work = dist.all_reduce(sent, op=dist.ReduceOp.SUM, async_op=True)
        self.in_flight.append((index, sent, work))

    @contextlib.contextmanager
    def no_sync(self, model):
        self.accumulating = True
        try:
            yield
        finally:
            self.accumulating = False

    def sync_gradients(self, model):
        launched = {index for index, _, _ in self.in_flight}
        for index, bucket in enumerate(self.buckets):
            if index not in launched:  # a parameter got no gradient: this bucket would never be averaged
                missing = [self.names[id(p)] for p in bucket if p.grad is None] or [self.names[id(bucket[0])]]
                raise RuntimeError(f"overlap: parameter {missing[0]} received no gradient in backward, so its "
                                   f"bucket was never all-reduced; every parameter must take part in the loss")
        for index, sent, work in self.in_flight:
            work.wait()
            unflatten_into(sent, [p.grad for p in self.buckets[index]])
        self.arrived = [0] * len(self.buckets)
        self.in_flight = []
