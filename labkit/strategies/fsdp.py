"""fsdp — Fully Sharded Data Parallel (ZeRO-3) with PyTorch's FSDP2, `fully_shard`.

Idea: DDP keeps the whole model, its gradients and its optimizer state on every rank.
ZeRO stage 3 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020) keeps only 1/n of each on each rank: every parameter is split
along its first dimension (padded so the n pieces are equal) and held as a DTensor shard.
A unit (here: each child module that holds parameters, then the root for what is left)
is all-gathered just before its forward, used, and freed again; in backward it is
all-gathered once more (unless `reshard_after_forward=false` kept it), its gradients are
reduce-scattered so each rank keeps the sum of its own slice, and the optimizer steps
only that slice. Compare with `ps_sharded` (ZeRO-1: only the optimizer state sharded)
and `ddp` (nothing sharded).

Communication per step, S = a unit's parameters (padded), per rank: an all-gather
(n−1)/n·S in forward, another in backward when resharded, a reduce-scatter (n−1)/n·S of
its gradients — 2 or 3 halves of an all-reduce, where DDP moves 2. Source: PyTorch's
`torch.distributed.fsdp.fully_shard` (FSDP2) and its docs; torchtitan shards the same way.

Mixed precision (`--set param_dtype=bf16`, FSDP2's `MixedPrecisionPolicy`): the shards, the
optimizer and its state stay in the model's dtype (fp32: the master weights); each gather casts
the shard to bf16 first, so the all-gathers carry half the bytes and forward and backward compute
in bf16. The gradients are reduce-scattered in `reduce_dtype` (default: the param_dtype; fp32
keeps the sum exact to fp32) and land on the fp32 shards. The cost: the weights a step computes
with are rounded to bf16's 8 bits of mantissa (docs/EXPERIMENT_GUIDE.md gives the measured gap).
"""

import contextlib

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from .base import About, Option, Strategy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def refuse(cfg, o) -> str:
    # Each rank's GradScaler would see only its shard's gradients (as in ps_sharded).
    if cfg.amp == "fp16":
        return ("fsdp does not support amp=fp16 (each rank's loss scaler sees only its shard "
                "of the gradients, so ranks could skip different steps); use --set amp=bf16")
    # fp16 has 5 exponent bits: gradients below 6e-5 lose precision and below 6e-8 become 0, so
    # fp16 training needs a loss scaler that every rank agrees on (torch's ShardedGradScaler),
    # which the lab's loop does not run. bf16 has fp32's exponent range and needs none.
    if "fp16" in (cfg.param_dtype, cfg.reduce_dtype):
        return ("fsdp does not support param_dtype/reduce_dtype=fp16 (without a loss scaler agreed by "
                "every rank, small fp16 gradients underflow to zero); use --set param_dtype=bf16")
    return ""


class FullyShardedDP(Strategy):
    about = About(
        options=(Option("reshard_after_forward", True, "free each unit's gathered parameters after forward "
                        "(all-gathered again in backward: less memory, more bytes)"),),
        label=lambda cfg, o: cfg.strategy_name + ("" if o.reshard_after_forward else " no-reshard"),
        refuse=refuse,
        overlaps_backward=True,  # FSDP2's collectives run in forward and backward hooks
        mixed_precision=True,  # takes --set param_dtype / reduce_dtype (FSDP2's MixedPrecisionPolicy)
        cost_model_note="the all-gathers inside forward and backward, and the copies in and out of them")

    def prepare(self, model, optimizer):
        device = next(model.parameters()).device
        # An explicit mesh of the device type: gloo on CPU stays on the CPU.
        mesh = init_device_mesh(device.type, (self.world,))
        old = dict(model.named_parameters())
        self.units = [child for child in model.children() if any(True for _ in child.parameters())]
        policy = self.precision(model)
        for unit in self.units:  # bottom-up: a unit's parameters are taken before the root's
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.options.reshard_after_forward, mp_policy=policy)
        # The root is needed first in backward: torch's own default keeps it gathered. Its output
        # is cast back to the model's dtype, so the loss is computed as without mixed precision.
        root_policy = MixedPrecisionPolicy(policy.param_dtype, policy.reduce_dtype, output_dtype=self.model_dtype)
        fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=root_policy)
        self.root = model
        self.repoint(optimizer, old, dict(model.named_parameters()))
        return model

    def precision(self, model):
        """FSDP2's policy from param_dtype and reduce_dtype; fp32 = no cast (the model's own
        dtype, which is float64 in the exactness tests)."""
        self.model_dtype = next(model.parameters()).dtype
        param = None if self.cfg.param_dtype == "fp32" else DTYPES[self.cfg.param_dtype]
        reduce = DTYPES[self.cfg.reduce_dtype] if self.cfg.reduce_dtype else None
        if reduce == torch.float32 and param is None:
            reduce = None  # "fp32" means full precision: a float64 model's gradients stay float64
        return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce)

    def repoint(self, optimizer, old, new):
        """The loop's optimizer, whichever it is (SGD, AdamW), was built over the full parameters:
        point it at the DTensor shards, so its state is made per shard (1/n of it on each rank)."""
        name_of = {id(p): name for name, p in old.items()}
        for group in optimizer.param_groups:
            group["params"] = [new[name_of[id(p)]] for p in group["params"]]

    @contextlib.contextmanager
    def no_sync(self, model):
        """Gradient accumulation (FSDP2's no_sync): backward keeps each unit's full gradient
        and adds into it; the last micro-batch's backward reduce-scatters the sum."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    @contextlib.contextmanager
    def whole_model(self, model):
        """Validation shards may hold different numbers of batches, and a sharded forward
        all-gathers: gather every unit once, here, so no forward needs the other ranks."""
        for unit in (*self.units, self.root):
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield model
        finally:
            for unit in (*self.units, self.root):
                unit.reshard()
                unit.set_reshard_after_forward(unit is not self.root and self.options.reshard_after_forward,
                                               recurse=False)
