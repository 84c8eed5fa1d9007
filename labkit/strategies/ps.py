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

from .base import About, Option, Strategy, flatten, nbytes, unflatten_into

SERVER = 0


def refuse(cfg, o) -> str:
    if cfg.nproc < 2:
        return "strategy 'ps' needs a server and a worker: use --nproc 2 or more"
    if cfg.amp == "fp16":
        return "ps does not support amp=fp16 (the loss scale lives on the server); use --set amp=bf16"
    return ""


def own_passes(params, rank, world, o) -> dict:
    """Its own passes in a step (the cost model's γ term), S = the flat model. The server, alone while
    the workers wait: zeros, ÷n, its own gradient flattened and the pull's flatten write fresh buffers;
    the additions and the copy out are in place. A worker: the push's and the pull's flatten (fresh),
    the copy out (in place)."""
    size, own = sum(map(nbytes, params)), int(o.ps_server_trains)
    if rank == SERVER:
        return {"fresh_alone": [3 + own, (3 + own) * size], "in_place_alone": [own + world, (own + world) * size]}
    return {"fresh": [2, 2 * size], "in_place": [1, size]}


class ParameterServer(Strategy):
    about = About(
        options=(Option("ps_server_trains", True, "rank 0 also computes its share of the batch (false: a dedicated server)"),),
        label=lambda cfg, o: "ps" if o.ps_server_trains else "ps (dedicated server)",
        servers=lambda cfg, o: 0 if o.ps_server_trains else 1,
        refuse=refuse, passes=own_passes,
        # what the model leaves out, measured in docs/BENCHMARKS.md (the γ term counts its passes)
        cost_model_note="the server's sends to (and receives from) its workers run at once; the model adds them up")

    def sync_gradients(self, model):  # push: workers → server
        params = [p for p in model.parameters() if p.requires_grad]
        if self.rank != SERVER:
            flat = flatten([p.grad for p in params])
            dist.send(flat, dst=SERVER)
            return
        total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        if self.options.ps_server_trains:
            total += flatten([p.grad for p in params])
        inbox = [torch.empty_like(total) for _ in range(1, self.world)]
        requests = [dist.irecv(buf, src=src) for src, buf in enumerate(inbox, start=1)]
        for request, buf in zip(requests, inbox):
            request.wait()
            total += buf
        data_ranks = self.world if self.options.ps_server_trains else self.world - 1  # all but a dedicated server
        for p in params:  # the dedicated server has no grads of its own yet
            if p.grad is None:
                p.grad = torch.empty_like(p)
        unflatten_into(total / data_ranks, [p.grad for p in params])

    def update(self, optimizer, scaler=None):
        if self.rank == SERVER:  # only the server steps; workers hold no optimizer state
            super().update(optimizer, scaler)

    def sync_parameters(self, model):  # pull: server → workers
        params = [p for p in model.parameters() if p.requires_grad]
        # flatten/unflatten_into, not parameters_to_vector: those .view() each parameter,
        # which fails on channels_last weights, and the copy back would drop the layout
        flat = flatten([p.detach() for p in params])
        if self.rank == SERVER:
            requests = [dist.isend(flat, dst=dst) for dst in range(1, self.world)]
            for request in requests:
                request.wait()
        else:
            dist.recv(flat, src=SERVER)
            with torch.no_grad():
                unflatten_into(flat, params)
