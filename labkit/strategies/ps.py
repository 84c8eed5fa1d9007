"""ps — synchronous parameter server with rank 0 as the server.

Idea: one process owns the model's truth. Every step, each worker pushes its
gradient to the server; the server sums them, averages over the data ranks, takes
the optimizer step (the optimizer state lives on the server only) and sends the
new parameters back to every worker.

Communication: point-to-point, all through rank 0. With n ranks the server
receives (n−1)·S bytes and sends (n−1)·S bytes per step (S = model size), while
each worker moves only S each way: the server's link is the bottleneck, which is
why `ps_sharded` spreads the server over all ranks. Option `ps_server_trains`
(default true, as originally): rank 0 also computes a share of the batch; false
makes it a dedicated server with n−1 workers.
"""

import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .base import Strategy, flatten, nbytes, unflatten_into

SERVER = 0


class ParameterServer(Strategy):
    def data_shard(self):
        if self.cfg.ps_server_trains:
            return self.rank, self.world
        return None if self.rank == SERVER else (self.rank - 1, self.world - 1)

    def sync_gradients(self, model):  # push: workers → server
        params = [p for p in model.parameters() if p.requires_grad]
        if self.rank != SERVER:
            flat = flatten([p.grad for p in params])
            dist.send(flat, dst=SERVER)
            self.count(sent=nbytes(flat))
            return
        total = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
        if self.cfg.ps_server_trains:
            total += flatten([p.grad for p in params])
        inbox = [torch.empty_like(total) for _ in range(1, self.world)]
        requests = [dist.irecv(buf, src=src) for src, buf in enumerate(inbox, start=1)]
        for request, buf in zip(requests, inbox):
            request.wait()
            total += buf
            self.count(received=nbytes(buf))
        data_ranks = self.world if self.cfg.ps_server_trains else self.world - 1
        for p in params:  # the dedicated server has no grads of its own yet
            if p.grad is None:
                p.grad = torch.empty_like(p)
        unflatten_into(total / data_ranks, [p.grad for p in params])

    def update(self, optimizer, scaler=None):
        if self.rank == SERVER:  # only the server steps; workers hold no optimizer state
            super().update(optimizer, scaler)

    def sync_parameters(self, model):  # pull: server → workers
        params = [p for p in model.parameters() if p.requires_grad]
        flat = parameters_to_vector(params)
        if self.rank == SERVER:
            requests = [dist.isend(flat, dst=dst) for dst in range(1, self.world)]
            for request in requests:
                request.wait()
            self.count(sent=nbytes(flat) * (self.world - 1), collectives=self.world - 1)
        else:
            dist.recv(flat, src=SERVER)
            self.count(received=nbytes(flat))
            vector_to_parameters(flat, params)
