"""ring — ring all-reduce from point-to-point sends: reduce-scatter, then all-gather.

Idea (Patarasuk & Yuan, 2009; popularised for deep learning by Baidu in 2017;
what NCCL does for large messages): flatten all
gradients into one buffer and cut it into n chunks. Ranks form a ring; each step
every rank sends one chunk to its right neighbour and receives one from its left.
After n−1 steps of *adding* what arrives (reduce-scatter), rank r holds the full sum
of chunk r+1; after n−1 steps of *copying* (all-gather) every rank holds every sum.

Communication: 2(n−1) steps of S/n bytes: 2(n−1)/n·S per rank whatever n is — the
bandwidth-optimal all-reduce. Sends and receives of one step go together through
`batch_isend_irecv`, so no rank waits on a neighbour that is itself waiting (no
deadlock on NCCL or gloo). Chunks may differ in length: any buffer length works.
"""

import torch
import torch.distributed as dist

from .base import About, Strategy, flatten, nbytes, unflatten_into


def ring_exchange(send: torch.Tensor, recv: torch.Tensor, rank: int, world: int) -> None:
    right, left = (rank + 1) % world, (rank - 1) % world
    ops = []
    if send.numel():  # a buffer shorter than the world has empty chunks: nothing to move
        ops.append(dist.P2POp(dist.isend, send, right))
    if recv.numel():
        ops.append(dist.P2POp(dist.irecv, recv, left))
    for request in dist.batch_isend_irecv(ops) if ops else []:
        request.wait()


def ring_all_reduce(flat: torch.Tensor, rank: int, world: int) -> None:
    """Sum `flat` across ranks in place."""
    chunks = list(flat.tensor_split(world))  # views into flat
    for step in range(world - 1):  # reduce-scatter
        send, recv = chunks[(rank - step) % world], chunks[(rank - step - 1) % world]
        inbox = torch.empty_like(recv)
        ring_exchange(send, inbox, rank, world)
        recv += inbox  # the chunk additions: this pass is the γ term of the cost model
    for step in range(world - 1):  # all-gather
        send, recv = chunks[(rank - step + 1) % world], chunks[(rank - step) % world]
        ring_exchange(send, recv, rank, world)


def own_passes(params, rank, world, o) -> dict:
    """Its own passes in a step (the cost model's γ term): flatten and ÷n write fresh buffers; the
    n−1 chunk additions (what this rank received in the reduce-scatter) and the copy out are in place."""
    size = sum(map(nbytes, params))
    return {"fresh": [2, 2 * size], "in_place": [world, (world - 1) * size // world + size]}


class Ring(Strategy):
    about = About(passes=own_passes, cost_model_note="2(n−1) lock-step exchanges, each waiting for both neighbours")

    def sync_gradients(self, model):
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        flat = flatten(grads) / self.world
        ring_all_reduce(flat, self.rank, self.world)
        unflatten_into(flat, grads)
