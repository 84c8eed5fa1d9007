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

from .base import About, Strategy, flatten, nbytes, unflatten_into
from .buckets import BUCKET_OPTIONS, compressed_label, make_buckets, to_wire


def own_passes(params, rank, world, o) -> dict:
    """Its own passes in a step (the cost model's γ term), for each bucket: flatten's copy in, the
    ÷n and the cast to the wire's dtype (each a fresh buffer), and the copy out (in place)."""
    buckets, size = len(make_buckets(params, o.bucket_mb)), sum(map(nbytes, params))
    fresh = 2 if o.compress == "none" else 3
    return {"fresh": [fresh * buckets, fresh * size], "in_place": [buckets, size]}


class Bucketed(Strategy):
    about = About(options=BUCKET_OPTIONS, label=compressed_label, passes=own_passes,
                  # what the model still leaves out once γ counts its passes (docs/BENCHMARKS.md)
                  cost_model_note="its all-reduces in a step, between passes of ranks that share cores, "
                                  "run slower than back to back")

    def prepare(self, model, optimizer):
        self.buckets = make_buckets(model.parameters(), self.options.bucket_mb)
        return model

    def sync_gradients(self, model):
        for bucket in self.buckets:
            grads = [p.grad for p in bucket]
            sent = to_wire(flatten(grads), self.world, self.options.compress)
            dist.all_reduce(sent, op=dist.ReduceOp.SUM)
            unflatten_into(sent, grads)  # copy_ casts back to the gradients' dtype
