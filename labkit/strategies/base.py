"""The strategy contract: how one gradient-synchronization method plugs into the loop.

The worker's loop calls, every step, after `loss.backward()`:

    strategy.sync_gradients(model)      # communication before the update
    strategy.update(optimizer, scaler)  # the optimizer step (the default: every rank)
    strategy.sync_parameters(model)     # communication after the update (parameter servers)

and times each call, so a strategy never times or prints anything itself. It only
counts what it puts on the wire (`bytes_sent`, `bytes_received`, `collectives`), which
the loop reads and resets every step.

Byte counts for collectives follow the ring algorithm (what NCCL uses for large
messages): an all-reduce of S bytes over n ranks sends and receives 2(n−1)/n·S per
rank, a reduce-scatter or all-gather (n−1)/n·S. Point-to-point sends count exactly.
"""

import torch
import torch.distributed as dist


class Strategy:
    def __init__(self, cfg, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.reset_counters()

    # -- the contract --------------------------------------------------------------
    def data_shard(self):
        """(shard index, shard count) of the data this rank trains on; None = no data."""
        return self.rank, self.world

    def prepare(self, model, optimizer):
        return model

    def sync_gradients(self, model):
        pass

    def update(self, optimizer, scaler=None):
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def sync_parameters(self, model):
        pass

    # -- counters ------------------------------------------------------------------
    def reset_counters(self):
        self.bytes_sent = self.bytes_received = self.collectives = 0

    def count(self, sent=0, received=0, collectives=1):
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)
        self.collectives += collectives

    def count_all_reduce(self, nbytes):
        ring = 2 * (self.world - 1) / self.world * nbytes
        self.count(ring, ring)


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def grads_of(model):
    """The gradient tensors of the trainable parameters, in a fixed order."""
    return [p.grad for p in model.parameters() if p.requires_grad]


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors) -> None:
    """Copy slices of `flat` back into `tensors` (the inverse of flatten)."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
