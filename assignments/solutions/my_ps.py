"""My parameter server: workers push gradients to rank 0, it steps, parameters come back."""
import torch
import torch.distributed as dist

from labkit.strategies.base import About, Strategy, flatten, unflatten_into

SERVER = 0


def refuse(cfg, o) -> str:
    if cfg.nproc < 2:
        return "my_ps.py needs a server and a worker: use --nproc 2 or more"
    if cfg.amp == "fp16":  # the workers' loss scalers would never follow the server's
        return "my_ps.py runs without amp=fp16 (the loss scale lives on the server); use --set amp=bf16"
    return ""


class MyParameterServer(Strategy):
    about = About(refuse=refuse)

    def sync_gradients(self, model):
        """Push: the server ends with the average of every rank's gradients in its .grad."""
        params = [p for p in model.parameters() if p.requires_grad]
        ### BEGIN SOLUTION
        flat = flatten([p.grad for p in params])
        if self.rank != SERVER:
            dist.send(flat, dst=SERVER)
            return
        inbox = [torch.empty_like(flat) for _ in range(1, self.world)]
        requests = [dist.irecv(buf, src=src) for src, buf in enumerate(inbox, start=1)]
        for request, buf in zip(requests, inbox):
            request.wait()
            flat += buf
        unflatten_into(flat / self.world, [p.grad for p in params])
        ### END SOLUTION

    def update(self, optimizer, scaler=None):
        """Step: only the server keeps optimizer state and steps."""
        ### BEGIN SOLUTION
        if self.rank == SERVER:
            super().update(optimizer, scaler)
        ### END SOLUTION

    def sync_parameters(self, model):
        """Pull: every worker ends with the server's parameters."""
        params = [p for p in model.parameters() if p.requires_grad]
        ### BEGIN SOLUTION
        flat = flatten([p.detach() for p in params])
        if self.rank == SERVER:
            requests = [dist.isend(flat, dst=dst) for dst in range(1, self.world)]
            for request in requests:
                request.wait()
        else:
            dist.recv(flat, src=SERVER)
            with torch.no_grad():
                unflatten_into(flat, params)
        ### END SOLUTION
