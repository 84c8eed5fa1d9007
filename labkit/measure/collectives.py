"""A collective microbenchmark in the manner of nccl-tests, run under torchrun:
`python -m torch.distributed.run --nproc-per-node N -m labkit.measure.collectives OUT.json`.

For each operation and message size: warm-up calls, then timed repeats (the device is
synchronized and the ranks meet at a barrier around the timed block). S is the
buffer size as nccl-tests defines it (all_gather: the gathered output; reduce_scatter:
the input), t the time per call: the median over `BLOCKS` timed blocks of back-to-back
calls (each block's mean, the slowest rank's), so one burst of load from another process
on a shared machine does not set the figure. Small messages get more calls per block:
their time is mostly latency, which a few calls measure poorly.

    algbw = S / t            busbw = algbw × factor(op, n)

factor: all_reduce 2(n−1)/n; all_gather, reduce_scatter (n−1)/n; broadcast, reduce,
send_recv 1. busbw is comparable with the link's bandwidth whatever the op and n.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist


def bus_factor(op: str, n: int) -> float:
    return {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n, "reduce_scatter": (n - 1) / n,
            "broadcast": 1.0, "reduce": 1.0, "send_recv": 1.0}[op]


def bandwidths(op: str, size_bytes: int, seconds: float, n: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s."""
    algbw = size_bytes / seconds / 1e9
    return algbw, algbw * bus_factor(op, n)


def make_call(op: str, numel: int, rank: int, n: int, device):
    """A zero-argument function that runs one `op` on a buffer of `numel` float32."""
    numel -= numel % n  # all_gather / reduce_scatter split the buffer in n equal parts
    full = torch.ones(numel, device=device)
    part = torch.ones(numel // n, device=device)
    right, left = (rank + 1) % n, (rank - 1) % n
    inbox = torch.empty_like(full)
    return {
        "all_reduce": lambda: dist.all_reduce(full),
        "broadcast": lambda: dist.broadcast(full, src=0),
        "reduce": lambda: dist.reduce(full, dst=0),
        "all_gather": lambda: dist.all_gather_single(full, part),
        "reduce_scatter": lambda: dist.reduce_scatter_single(part, full),
        "send_recv": lambda: [r.wait() for r in dist.batch_isend_irecv(
            [dist.P2POp(dist.isend, full, right), dist.P2POp(dist.irecv, inbox, left)])],
    }[op], numel * 4


OPS = ("all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "send_recv")
BLOCKS = 3


def main(out_path: str, max_mb: float = 128, min_kb: float = 1, warmup: int = 2, repeats: int = 5,
         ops: str = ",".join(OPS)) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sizes, size = [], int(min_kb * 1024)
    while size <= max_mb * 1024 * 1024:
        sizes.append(size)
        size *= 4
    if sizes[-1] < int(max_mb * 1024 * 1024):
        sizes.append(int(max_mb * 1024 * 1024))  # always end at the largest size asked for
    rows = []
    for op in ops.split(","):
        for size in sizes:
            call, nbytes = make_call(op, max(n, size // 4), rank, n, device)
            for _ in range(warmup):
                call()
            calls = repeats if size >= 1 << 20 else 4 * repeats
            blocks = []
            for _ in range(BLOCKS):
                sync()
                dist.barrier()
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                sync()
                blocks.append(max_over_ranks((time.perf_counter() - start) / calls, device))  # the slowest rank
            seconds = sorted(blocks)[len(blocks) // 2]
            algbw, busbw = bandwidths(op, nbytes, seconds, n)
            rows.append({"op": op, "size_bytes": nbytes, "time_s": seconds, "algbw_gb_s": algbw, "busbw_gb_s": busbw,
                         "block_times_s": blocks})
        if rank == 0:
            print(f"{op}: done ({len(sizes)} sizes)", flush=True)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump({"world_size": n, "backend": dist.get_backend(), "device": device.type, "warmup": warmup,
                       "repeats": repeats, "blocks": BLOCKS, "rows": rows}, handle, indent=1)
    dist.destroy_process_group()


def max_over_ranks(value: float, device) -> float:
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


if __name__ == "__main__":
    out, *numbers = sys.argv[1:]
    keys = ("max_mb", "min_kb", "warmup", "repeats", "ops")
    main(out, **{k: v if k == "ops" else float(v) if k.endswith(("mb", "kb")) else int(v)
                 for k, v in zip(keys, numbers)})
