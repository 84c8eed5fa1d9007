"""This rank's place in the job: rank, world size and device from torchrun's environment,
the process group, and the two small collectives the loop itself needs."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from labkit import hardware


def setup(cfg):
    """Rank, world size and device from torchrun's environment (a plain process = rank 0 of 1)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.nodes > 1 and cfg.rdzv_endpoint and "RANK" in os.environ:
        # Real nodes: torchrun's c10d rendezvous numbers the nodes in the order they joined,
        # whatever --node-rank says. Rank 0 writes the result and the checkpoints, so number the
        # ranks by the node rank the user gave instead: node 0's first rank is rank 0, and the
        # result lands in node 0's --out. (The same mapping on every rank: a permutation.)
        rank = cfg.node_rank * int(os.environ["LOCAL_WORLD_SIZE"]) + local_rank
        os.environ["RANK"] = str(rank)
    if cfg.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    else:
        device = torch.device("cpu")
        torch.set_num_threads(hardware.cpu_threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if "RANK" in os.environ:
        # Our own view of torchrun's store, prefixed by the attempt: after a restart the
        # store still holds the dead workers' addresses, and gloo would dial them.
        timeout = timedelta(seconds=cfg.pg_timeout_s)
        agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=rank == 0 and not agent_hosts_store, timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(cfg.backend, store=dist.PrefixStore(f"labkit/attempt_{attempt}", store),
                                rank=rank, world_size=world, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return rank, world, device


def all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def sync_buffers(model, source: int):
    """Copy BatchNorm running statistics from one training rank to all before
    validating. DDP does this every forward; the hand-written methods only average
    gradients, so each rank's running statistics drift apart."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=source)


def finish():
    if dist.is_initialized():
        dist.barrier()  # nobody leaves before rank 0 has written the result
        dist.destroy_process_group()
