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

It also times the γ of the α–β–γ model (Thakur, Rabenseifner & Gropp, 2005): a method's own
passes over its buffers, no wire (copy in, ÷n, chunk additions, copy out), on every rank at
once, as in a step, with the runs' threads per rank. Two kinds (`LOCAL_PASSES`), because
on a CPU they differ several times over (over 32 MB: 3–4× with 4 ranks on 2 cores, 10–25×
for one process alone): a pass that writes into memory the method already holds (`copy_`,
`+=`) and one that writes a *fresh* buffer (`torch.cat`, `x / n`, pad): the OS maps and
zeroes a large new buffer's pages on first touch (glibc returns buffers over 32 MB to the
OS on free), which costs more than the arithmetic. Each kind is timed twice: on every rank
at once (a symmetric method's passes) and on rank 0 alone while the others wait (`_alone`: a
server's), which has the cores to itself (4 ranks share 2 cores here).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from labkit import hardware


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
# the kinds a method declares in About.passes: fresh or in_place, _alone or not
LOCAL_PASSES = ("in_place", "fresh", "in_place_alone", "fresh_alone")


def make_pass(kind: str, numel: int, rank: int, n: int, device):
    """A zero-argument function that runs one local pass of `kind` over `numel` float32: on
    every rank at once, or (`_alone`) on rank 0 while the others wait, as a server's."""
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    if kind.endswith("_alone") and rank != 0:
        return (lambda: None), numel * 4
    return {"in_place": lambda: dst.copy_(src),  # unflatten_into, recv += inbox, grad /= n
            "fresh": lambda: src / n,  # flatten's torch.cat, x / n, pad: a new buffer each time
            }[kind.removesuffix("_alone")], numel * 4


def timed(call, calls: int, sync, device) -> tuple[float, list[float]]:
    """Seconds per call: the median over BLOCKS blocks of `calls` back-to-back calls (each
    block's mean, the slowest rank's), and the blocks' times."""
    blocks = []
    for _ in range(BLOCKS):
        sync()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        blocks.append(max_over_ranks((time.perf_counter() - start) / calls, device))  # the slowest rank
    return sorted(blocks)[len(blocks) // 2], blocks


def main(out_path: str, max_mb: float = 128, min_kb: float = 1, warmup: int = 2, repeats: int = 5,
         ops: str = ",".join(OPS)) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:  # the threads a run's rank gets (training/process_group.py): γ measured as the runs work
        torch.set_num_threads(hardware.cpu_threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
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
            seconds, blocks = timed(call, repeats if size >= 1 << 20 else 4 * repeats, sync, device)
            algbw, busbw = bandwidths(op, nbytes, seconds, n)
            rows.append({"op": op, "size_bytes": nbytes, "time_s": seconds, "algbw_gb_s": algbw, "busbw_gb_s": busbw,
                         "block_times_s": blocks})
        if rank == 0:
            print(f"{op}: done ({len(sizes)} sizes)", flush=True)
    local_rows = []
    for kind in LOCAL_PASSES:
        # every power of two: a pass's cost per byte steps where a buffer leaves a cache or
        # crosses the allocator's 32 MB (fresh), so the cost model reads it at the nearest size
        for size in sorted({*sizes, *(1 << k for k in range(10, 40) if sizes[0] <= 1 << k <= sizes[-1])}):
            call, nbytes = make_pass(kind, max(1, size // 4), rank, n, device)
            for _ in range(warmup):
                call()
            seconds, blocks = timed(call, repeats if size >= 1 << 20 else 4 * repeats, sync, device)
            local_rows.append({"kind": kind, "size_bytes": nbytes, "time_s": seconds,
                               "gb_s": nbytes / seconds / 1e9, "block_times_s": blocks})
    if rank == 0:
        print(f"local passes: done ({', '.join(LOCAL_PASSES)})", flush=True)
        with open(out_path, "w") as handle:
            json.dump({"world_size": n, "backend": dist.get_backend(), "device": device.type, "warmup": warmup,
                       "repeats": repeats, "blocks": BLOCKS, "threads_per_rank": torch.get_num_threads(),
                       "rows": rows, "local_rows": local_rows}, handle, indent=1)
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
