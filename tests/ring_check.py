"""Run under torchrun by test_ring.py: ring_all_reduce equals the true sum for many
buffer lengths, including ones shorter than, or not divisible by, the world size."""

import torch
import torch.distributed as dist

from labkit.strategies.ring import ring_all_reduce
from labkit.training.comm_record import CommRecord, step_counts


def rank_tensor(rank: int, length: int) -> torch.Tensor:
    return torch.randn(length, generator=torch.Generator().manual_seed(1000 * rank + length), dtype=torch.float64)


dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
for length in (1, 2, 3, 5, 7, 64, 1001):
    flat = rank_tensor(rank, length)
    with CommRecord() as record:  # what the loop counts: every send and receive torch ran
        ring_all_reduce(flat, rank, world)
    sent = step_counts(record.ops)["bytes_sent"]
    expected = sum(rank_tensor(r, length) for r in range(world))
    assert torch.allclose(flat, expected, atol=1e-12), (length, flat, expected)
    chunk_bytes = [c.numel() * 8 for c in expected.tensor_split(world)]
    # every chunk but one passes through each rank in each phase: ≈ 2(n−1)/n · S
    assert sent == sum(chunk_bytes[(rank - s) % world] + chunk_bytes[(rank - s + 1) % world] for s in range(world - 1))
print(f"rank {rank}/{world}: ring ok")
dist.destroy_process_group()
