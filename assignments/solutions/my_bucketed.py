"""My bucketed all-reduce: a few flat buffers instead of one collective per tensor."""
import torch.distributed as dist

from labkit.strategies.base import About, Option, Strategy, flatten, nbytes, unflatten_into


class MyBucketed(Strategy):
    about = About(options=(Option("bucket_mb", 25.0, "bucket size in MB"),))  # read it as self.options.bucket_mb

    def prepare(self, model, optimizer):
        """Once: build self.buckets, a list of lists of trainable parameters, filled as DDP
        fills its buckets (see the idea above)."""
        ### BEGIN SOLUTION
        limit = self.options.bucket_mb * 1024 * 1024
        self.buckets, current, size = [], [], 0
        for p in reversed([p for p in model.parameters() if p.requires_grad]):
            current.append(p)
            size += nbytes(p)
            if size >= limit:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        ### END SOLUTION
        return model

    def sync_gradients(self, model):
        """After backward: average the gradients over all ranks with one collective per bucket."""
        ### BEGIN SOLUTION
        for bucket in self.buckets:
            grads = [p.grad for p in bucket]
            flat = flatten(grads)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            unflatten_into(flat, grads)
        ### END SOLUTION
