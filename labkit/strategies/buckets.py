"""Shared by `bucketed` and `overlap`: group gradients into flat buckets, and
optionally compress a bucket to fp16/bf16 for the wire.

Buckets are filled in *reverse* parameter order, as DDP does: backward produces the
last layer's gradients first, so the first bucket is the first to be ready.
"""

import torch

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


def to_wire(flat: torch.Tensor, world: int, compress: str) -> torch.Tensor:
    """Divide by the world size *before* casting (as DDP's fp16 hook does): the sum
    of n fp16 values can overflow where their average does not."""
    flat = flat / world
    dtype = WIRE_DTYPES[compress]
    return flat if dtype is None else flat.to(dtype)
