"""Shared by `bucketed` and `overlap`: group gradients into flat buckets, and
optionally compress a bucket to fp16/bf16 for the wire.

Buckets are filled in *reverse* parameter order, as DDP does: backward produces the
last layer's gradients first, so the first bucket is the first to be ready.
"""

import torch

from .base import Option

BUCKET_OPTIONS = (
    Option("bucket_mb", 25.0, "bucket size in MB (DDP's default is 25)"),
    Option("compress", "none", "precision on the wire", choices=("none", "fp16", "bf16")),
)
WIRE_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_buckets(params, bucket_mb: float) -> list[list[torch.nn.Parameter]]:
    limit = bucket_mb * 1024 * 1024
    buckets, current, size = [], [], 0
    for p in reversed([p for p in params if p.requires_grad]):
        current.append(p)
        size += p.numel() * p.element_size()
        if size >= limit:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def compressed_label(cfg, o) -> str:
    """'bucketed' and 'bucketed fp16' are different methods in a comparison."""
    return cfg.strategy_name + ("" if o.compress == "none" else f" {o.compress}")


def to_wire(flat: torch.Tensor, world: int, compress: str) -> torch.Tensor:
    """Divide by the world size *before* summing: the sum of n fp16 gradients can
    overflow (fp16 tops out at 65504) where the sum of n averages-to-be cannot.
    (DDP's fp16 hook casts first and then divides, still before the all-reduce sums.)
    fp16 keeps 10 bits of mantissa but a narrow range; bf16 keeps float32's range
    with only 7 bits of mantissa: coarser, but it never overflows where float32 does not."""
    dtype = WIRE_DTYPES[compress]
    flat = flat / world
    return flat if dtype is None else flat.to(dtype)
