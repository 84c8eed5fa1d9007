"""bucketed — copy gradients into ~25 MB flat buckets, one all-reduce per bucket.

Idea (Horovod's "tensor fusion", DDP's buckets): every collective pays a fixed
latency, so 161 small all-reduces (ResNet-50's tensors) cost far more than a few
large ones moving the same bytes. Flatten, all-reduce, copy back.

Communication: the same bytes as `allreduce`, in len(buckets) collectives instead
of one per tensor; still all after backward. Option `bucket_mb`; `compress` =
fp16 / bf16 halves the bytes on the wire at some precision cost. Compare with
`allreduce` (per tensor) and `overlap` (the same buckets, started during backward).
"""

import torch.distributed as dist

from .base import Strategy, flatten, nbytes, unflatten_into
from .buckets import BUCKET_OPTIONS, compressed_label, make_buckets, to_wire


class Bucketed(Strategy):
    options = BUCKET_OPTIONS
    label = classmethod(compressed_label)
    # what the model still leaves out once γ counts its passes (docs/BENCHMARKS.md)
    cost_model_note = "its all-reduces in a step, between passes of ranks that share cores, run slower than back to back"

    def prepare(self, model, optimizer):
        self.buckets = make_buckets(model.parameters(), self.options.bucket_mb)
        return model

    def sync_gradients(self, model):
        for bucket in self.buckets:
            grads = [p.grad for p in bucket]
            flat = flatten(grads)
            sent = to_wire(flat, self.world, self.options.compress, self.wire)
            dist.all_reduce(sent, op=dist.ReduceOp.SUM)
            unflatten_into(sent, grads)  # copy_ casts back to the gradients' dtype
            # its own passes (the γ term): flatten's copy in (fresh), the copy out (in place)
            self.wire.local(nbytes(flat), fresh=True)
            self.wire.local(nbytes(flat))
