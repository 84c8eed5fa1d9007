"""My overlapped all-reduce: each bucket starts its all-reduce during backward."""
import functools

import torch.distributed as dist

from labkit.strategies.base import About, Option, Strategy, flatten, unflatten_into
from labkit.strategies.buckets import make_buckets


class MyOverlap(Strategy):
    about = About(options=(Option("bucket_mb", 25.0, "bucket size in MB"),),
                  overlaps_backward=True)  # all-reduces launched from autograd hooks, inside backward

    def prepare(self, model, optimizer):
        self.buckets = make_buckets(model.parameters(), self.options.bucket_mb)  # as in exercise 2
        self.arrived = [0] * len(self.buckets)  # gradients arrived so far, per bucket
        self.in_flight = []  # (bucket index, flat buffer, work handle)
        # Make autograd call self.on_grad_ready(bucket_index, param) as soon as a gradient is final.
        ### BEGIN SOLUTION
        for index, bucket in enumerate(self.buckets):
            for p in bucket:
                p.register_post_accumulate_grad_hook(functools.partial(self.on_grad_ready, index))
        ### END SOLUTION
        return model

    def on_grad_ready(self, index, param):
        """Inside backward, once per parameter: when the last gradient of bucket `index` has
        arrived, start averaging that bucket without waiting for the result."""
        ### BEGIN SOLUTION
        self.arrived[index] += 1
        if self.arrived[index] == len(self.buckets[index]):
            flat = flatten([p.grad for p in self.buckets[index]]) / self.world
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
            self.in_flight.append((index, flat, work))
        ### END SOLUTION

    def sync_gradients(self, model):
        """After backward: the averages are in the gradients, and the next step starts afresh."""
        ### BEGIN SOLUTION
        for index, flat, work in self.in_flight:
            work.wait()
            unflatten_into(flat, [p.grad for p in self.buckets[index]])
        self.arrived = [0] * len(self.buckets)
        self.in_flight = []
        ### END SOLUTION
