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

from labkit.errors import ConfigError

from .base import Option, Strategy, flatten, nbytes, unflatten_into

SERVER = 0


class ParameterServer(Strategy):
    # what the model leaves out, measured in docs/BENCHMARKS.md (the γ term counts its passes)
    cost_model_note = "the server's sends to (and receives from) its workers run at once; the model adds them up"
    options = (Option("ps_server_trains", True, "rank 0 also computes its share of the batch (false: a dedicated server)"),)

    @classmethod
    def check(cls, cfg):
        if cfg.nproc < 2:
            raise ConfigError("strategy 'ps' needs a server and a worker: use --nproc 2 or more")
        if cfg.amp == "fp16":
            raise ConfigError("ps does not support amp=fp16 (the loss scale lives on the server); use --set amp=bf16")

    @classmethod
    def data_ranks(cls, cfg):
        return cfg.nproc if cls.options_of(cfg).ps_server_trains else cfg.nproc - 1

    @classmethod
    def label(cls, cfg):
        return "ps" if cls.options_of(cfg).ps_server_trains else "ps (dedicated server)"

    def data_shard(self):
        if self.options.ps_server_trains:
            return self.rank, self.world
        return None if self.rank == SERVER else (self.rank - 1, self.world - 1)

    def sync_gradients(self, model):  # push: workers → server
        params = [p for p in model.parameters() if p.requires_grad]
        if self.rank != SERVER:
            flat = flatten([p.grad for p in params])
            dist.send(flat, dst=SERVER)
            self.wire.local(nbytes(flat), fresh=True)  # the γ term: flatten's copy in
            return
        total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        if self.options.ps_server_trains:
            total += flatten([p.grad for p in params])
        inbox = [torch.empty_like(total) for _ in range(1, self.world)]
        requests = [dist.irecv(buf, src=src) for src, buf in enumerate(inbox, start=1)]
        for request, buf in zip(requests, inbox):
            request.wait()
            total += buf
        data_ranks = self.world if self.options.ps_server_trains else self.world - 1  # as data_shard
        for p in params:  # the dedicated server has no grads of its own yet
            if p.grad is None:
                p.grad = torch.empty_like(p)
        unflatten_into(total / data_ranks, [p.grad for p in params])
        # the server's own passes (the γ term), made alone while the workers wait: zeros, ÷n
        # and its own gradient flattened write fresh buffers; the additions and copy out in place
        own = int(self.options.ps_server_trains)
        self.wire.local((2 + own) * nbytes(total), passes=2 + own, fresh=True, alone=True)
        self.wire.local((own + self.world) * nbytes(total), passes=own + self.world, alone=True)

    def update(self, optimizer, scaler=None):
        if self.rank == SERVER:  # only the server steps; workers hold no optimizer state
            super().update(optimizer, scaler)

    def sync_parameters(self, model):  # pull: server → workers
        params = [p for p in model.parameters() if p.requires_grad]
        # flatten/unflatten_into, not parameters_to_vector: those .view() each parameter,
        # which fails on channels_last weights, and the copy back would drop the layout
        flat = flatten([p.detach() for p in params])
        # the γ term: flatten's copy in (the server's alone, while the workers wait to receive)
        self.wire.local(nbytes(flat), fresh=True, alone=self.rank == SERVER)
        if self.rank == SERVER:
            requests = [dist.isend(flat, dst=dst) for dst in range(1, self.world)]
            for request in requests:
                request.wait()
        else:
            dist.recv(flat, src=SERVER)
            with torch.no_grad():
                unflatten_into(flat, params)
            self.wire.local(nbytes(flat))  # and the worker's copy out
