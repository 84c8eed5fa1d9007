"""ddp — PyTorch DistributedDataParallel, the baseline every method is measured against.

Idea: DDP hooks into autograd. Gradients are grouped into buckets (~25 MB) in
reverse order of use; as soon as a bucket's gradients are all computed during
backward, DDP starts an asynchronous all-reduce on it, so communication overlaps
with the rest of the backward pass. By the time `backward()` returns the gradients
are already averaged, so `sync_gradients` has nothing left to do.

In step 1 DDP does not yet know the order in which gradients arrive: it reduces them
in one bucket when backward ends, then rebuilds its buckets in arrival order (the
all-reduce count per step goes from 1 to several, as the loop counts).

Gradient accumulation (`--set accumulate=K`): DDP's own `no_sync()` around the first
K−1 micro-batches (forward included: DDP decides in forward whether backward reduces),
so a step still all-reduces every gradient once, on the last micro-batch.

Options: `ddp_bucket_cap_mb`, `ddp_gradient_as_bucket_view` (no gradient copy into
buckets), `ddp_static_graph`, and `ddp_hook` = fp16 / bf16 to compress buckets on
the wire with PyTorch's built-in communication hooks. Compare with `overlap`, the
same idea written by hand.
"""

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from .base import About, Option, Strategy

COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
DDP_OPTIONS = (
    Option("ddp_bucket_cap_mb", 25.0, "DDP's bucket size in MB"),
    Option("ddp_gradient_as_bucket_view", False, "gradients live inside the buckets (no copy)"),
    Option("ddp_static_graph", False, "the graph never changes: DDP may skip some bookkeeping"),
)


class TorchDDP(Strategy):
    about = About(
        options=DDP_OPTIONS + (Option("ddp_hook", "none", "compress buckets on the wire with a DDP comm hook",
                                      choices=("none", "fp16", "bf16")),),
        label=lambda cfg, o: cfg.strategy_name + ("" if o.ddp_hook == "none" else f" {o.ddp_hook}-hook"),
        overlaps_backward=True)  # all-reduces launched from autograd hooks

    def prepare(self, model, optimizer):
        device = next(model.parameters()).device
        ddp = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            bucket_cap_mb=self.options.ddp_bucket_cap_mb,
            gradient_as_bucket_view=self.options.ddp_gradient_as_bucket_view,
            static_graph=self.options.ddp_static_graph,
        )
        self.register_hook(ddp)
        return ddp

    def register_hook(self, ddp):
        if self.options.ddp_hook in COMPRESSION_HOOKS:
            ddp.register_comm_hook(state=None, hook=COMPRESSION_HOOKS[self.options.ddp_hook])

    def no_sync(self, model):
        return model.no_sync()  # DDP's own: backward only accumulates into .grad

    def sync_gradients(self, model):
        # Already done inside backward(): one all-reduce per bucket. Nothing to wait for.
        pass
