"""What crossed each node's network link, from the kernel's own byte counters.

On a job over several nodes, the first rank of each node reads its interface's counters
(/sys/class/net/IFACE/statistics/{tx,rx}_bytes) around every step. Unlike the bytes the loop
counts (comm_record.py: the calls torch ran, each by the backend's algorithm), this is what
really left and entered the node, headers included: the traffic between ranks of one node stays on its loopback and is not
in it. The busiest link's bytes ÷ its rate is the least time the link needs per step — what a
slower link will cost, predicted from a run on a faster one (notebook 07).
"""

import os
import statistics
from pathlib import Path

import torch.distributed as dist

from labkit.config import parse_rate


class LinkMeter:
    def __init__(self, cfg):
        self.cfg = cfg
        self.interface = "eth0" if cfg.emulated else cfg.interface  # an emulated node's veth end
        self.folder = Path("/sys/class/net") / self.interface / "statistics" if self.interface else None
        first_of_node = int(os.environ.get("LOCAL_RANK", 0)) == 0
        self.active = cfg.nodes > 1 and first_of_node and self.folder is not None and self.folder.is_dir()
        self.per_step = []  # (tx, rx) bytes of each step

    def read(self) -> tuple[int, int]:
        return tuple(int((self.folder / f"{way}_bytes").read_text()) for way in ("tx", "rx"))

    def before(self):
        if self.active:
            self.start = self.read()

    def after(self):
        if self.active:
            tx, rx = self.read()
            self.per_step.append((tx - self.start[0], rx - self.start[1]))

    def topology(self, warmup: int) -> dict | None:
        """On rank 0, the job's topology and each node's median link bytes per measured step
        (every rank must call it: it gathers); None elsewhere and on one node."""
        cfg = self.cfg
        if cfg.nodes == 1 or not dist.is_initialized():
            return None
        measured = self.per_step[warmup:] or self.per_step
        mine = None
        if self.active and measured:
            node = dist.get_rank() // cfg.ranks_per_node
            mine = {"node": node, "tx_bytes": statistics.median(t for t, _ in measured),
                    "rx_bytes": statistics.median(r for _, r in measured)}
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if dist.get_rank() != 0:
            return None
        links = sorted((g for g in gathered if g), key=lambda g: g["node"])
        busiest = max((max(g["tx_bytes"], g["rx_bytes"]) for g in links), default=None)
        rate = parse_rate(cfg.link) / 8 if cfg.link else None  # bytes per second
        return {"nodes": cfg.nodes, "ranks_per_node": cfg.ranks_per_node, "emulated": cfg.emulated,
                "link": cfg.link or None, "link_rate_bytes_s": rate, "link_bytes_per_step": links,
                "busiest_link_bytes_per_step": busiest,
                # the least time the busiest link needs per step: its bytes at its rate
                "link_time_per_step_s": busiest / rate if busiest is not None and rate else None}
