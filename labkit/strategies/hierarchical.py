"""hierarchical — reduce inside each node, all-reduce across the nodes' leaders, broadcast back.

Idea: links inside a machine (shared memory, NVLink) are fast, the network between
machines is slow and pays a latency per message. Only one rank per node (its leader,
local rank 0) touches the network. A step, on one flat buffer of all gradients (S bytes):

    1. reduce (sum) inside each node to its leader        fast links, g ranks a node
    2. all-reduce across the leaders                       the network, N = n/g ranks
    3. broadcast inside each node from its leader          fast links
    then ÷ n: every rank holds the average over the global batch, as with DDP.

A flat ring over all n ranks (in node order) takes 2(n−1) latency-bound steps and puts
2(n−1)/n·S on each node's link; the leaders' ring takes 2(N−1) steps and puts 2(N−1)/N·S
there, in chunks g times larger. The price: the reduce and broadcast move S more inside each node.

Where it comes from: the two-level all-reduce of Horovod (HOROVOD_HIERARCHICAL_ALLREDUCE,
horovod/common/ops/nccl_operations.cc). Horovod does this exact reduce → leaders'
all-reduce → broadcast for the part of the buffer that does not split evenly, and for the
rest a reduce-scatter / all-gather inside the node, so that every local rank carries 1/g
of the buffer across the network in parallel — the refinement to try next. NCCL's trees
build the same shape inside the library (a chain within each node, a tree across nodes).

Compare with `bucketed` (one flat ring over every rank) at a slow emulated link.
Option `group_size`: ranks per node; 0 = torchrun's LOCAL_WORLD_SIZE (ranks are numbered
node by node). On one machine, `--set group_size=2` with 4 ranks plays 2 nodes × 2 ranks.
"""

import os

import torch.distributed as dist

from .base import About, Option, Strategy, flatten, grads_of, unflatten_into


class Hierarchical(Strategy):
    about = About(
        options=(Option("group_size", 0, "ranks per node (0: torchrun's LOCAL_WORLD_SIZE)"),),
        refuse=lambda cfg, o: (f"group_size={o.group_size} must divide the {cfg.nproc} ranks (0: one group per node)"
                               if o.group_size < 0 or (o.group_size and cfg.nproc % o.group_size) else ""),
        cost_model_note="its collectives run on groups of group_size and of nodes ranks; the benchmark fits "
                        "ops over every rank; its own copies (flatten, ÷n, unflatten)")

    def prepare(self, model, optimizer):
        self.size = self.options.group_size or int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.nodes = self.world // self.size
        self.leader = self.rank - self.rank % self.size  # ranks are contiguous per node
        # Creating a group is itself collective: every rank builds every group, in the same order.
        self.node_group, _ = dist.new_subgroups_by_enumeration(
            [list(range(first, first + self.size)) for first in range(0, self.world, self.size)])
        self.leader_group, _ = dist.new_subgroups_by_enumeration([list(range(0, self.world, self.size))])
        return model  # leader_group is None on the ranks that are not leaders

    def sync_gradients(self, model):
        grads = grads_of(model)
        flat = flatten(grads)  # one buffer: three calls per step, whatever the number of tensors
        if self.size > 1:  # 1. sum inside the node, onto the leader (the others' buffers: scratch)
            dist.reduce(flat, dst=self.leader, op=dist.ReduceOp.SUM, group=self.node_group)
        if self.rank == self.leader and self.nodes > 1:  # 2. only leaders use the network
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.leader_group)
        if self.size > 1:  # 3. the leader's global sum to every rank of its node
            dist.broadcast(flat, src=self.leader, group=self.node_group)
        flat /= self.world
        unflatten_into(flat, grads)
