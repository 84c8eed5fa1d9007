"""ssp — a stale-synchronous parameter server: a worker may run up to s steps ahead.

Idea (Ho et al., "More effective distributed ML via a stale synchronous parallel parameter
server", NIPS 2013): a synchronous server makes every worker wait for the slowest each step;
a fully asynchronous one lets gradients computed on very old parameters in. SSP bounds the
gap: a worker may be at most s steps (`--set staleness=s`) ahead of the slowest, and waits
only when it would go further. s = 0 is the synchronous server; a large s, asynchronous SGD.

Communication: point-to-point, all through rank 0, a dedicated server (no data; n−1
workers). Each step a worker sends its gradient (S bytes) and receives parameters (S bytes).
The server receives from whoever arrives first (`dist.recv(src=None)` tells the sender),
and replies with its current parameters as soon as the bound lets that worker go on.

The update: a gradient belongs to its worker's step k. Step k is applied as `ps` applies a
step: one optimizer step on the mean of the n−1 gradients of step k, taken as soon as the
last of them arrives. Gradients of steps not yet complete are applied right away too: the
parameters a worker receives are a provisional optimizer step with them (each weighted
1/(n−1)) on top of the last complete step, taken on the server and undone. So s = 0 is
exactly `ps` with ps_server_trains=false, while with s > 0 a fast worker sees its own and
the others' recent gradients. Each gradient's staleness — it updates step k, on top of
step k − 1, but was computed from parameters holding only `seen` complete steps: k − 1 − seen,
0 when synchronous, ≤ s by the bound — is in every step record of rank 0 (`staleness`, one
entry per gradient received in that step).

Compare with `ps` (s = 0) under a straggler: there all wait for the slow worker every step;
here the others run ahead (up to s), which is why asynchrony exists. A worker that is always
slow (`--set straggler=1:3`) still sets the pace in the long run (the others can be only s
steps ahead of it); a transient one (`straggler=any:3`, a different worker each step) is
what the bound absorbs (notebook 05b).
"""

import contextlib
import copy

import torch
import torch.distributed as dist

from .base import About, Option, Strategy, flatten, unflatten_into

SERVER = 0


def refuse(cfg, o) -> str:
    if cfg.nproc < 2:
        return "strategy 'ssp' needs a server and a worker: use --nproc 2 or more"
    if o.staleness < 0:
        return f"staleness={o.staleness}: a worker cannot be behind the slowest; use 0 (synchronous) or more"
    if cfg.amp == "fp16":
        return "ssp does not support amp=fp16 (the loss scale lives on the server); use --set amp=bf16"
    if cfg.checkpoint_every and o.staleness > 0:  # mid-epoch the server holds gradients of unfinished steps
        return "ssp with staleness > 0 checkpoints at epoch ends only; use checkpoint_every=0"
    return ""


class StaleSynchronousServer(Strategy):
    about = About(options=(Option("staleness", 2, "steps a worker may run ahead of the slowest (0: synchronous, = ps)"),),
                  label=lambda cfg, o: f"ssp (s={o.staleness})", refuse=refuse,
                  servers=1,  # rank 0 serves, with no data of its own
                  cost_model_note="point-to-point through one server, and the waits for the staleness bound")

    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.workers = optimizer, range(1, self.world)
        self.pushed = dict.fromkeys(self.workers, 0)  # gradients received from each worker
        self.seen = dict.fromkeys(self.workers, 0)  # complete steps in the parameters it last got
        self.done = 0  # complete steps: every worker's gradient of each applied
        self.pending = {}  # step k → the sum of its gradients received so far
        self.held, self.staleness = [], []  # workers whose reply waits for the bound
        return model

    def sync_gradients(self, model):
        if self.rank != SERVER:  # push, then wait in sync_parameters for the reply
            flat = flatten([p.grad for p in self.params])
            dist.send(flat, dst=SERVER)
            return
        # The server's step: n−1 gradients, in the order they come, whoever sends them (a fast
        # worker may send two while a slow one sends none), so its loop runs as many steps as
        # the workers' and the epoch's collectives line up.
        self.staleness = []
        inbox = torch.empty_like(flatten([p.detach() for p in self.params]))
        for _ in self.workers:
            worker = dist.recv(inbox, src=None)  # whoever arrives first; gloo names the sender
            self.pushed[worker] += 1
            step = self.pushed[worker]
            # it updates step `step`, on top of step − 1, but was computed from `seen` steps
            self.staleness.append(step - 1 - self.seen[worker])
            self.pending[step] = self.pending[step] + inbox if step in self.pending else inbox.clone()
            while min(self.pushed.values()) > self.done:  # step done + 1 is complete: apply it
                self.done += 1
                self.optimizer_step(self.pending.pop(self.done), self.done)
            self.held.append(worker)
            self.release()

    def release(self):
        """Reply to every held worker that the bound now lets go on: at most s steps ahead."""
        slowest = min(self.pushed.values())
        free = [w for w in self.held if self.pushed[w] - slowest <= self.options.staleness]
        if not free:
            return
        flat = self.current_parameters()
        for worker in free:
            dist.send(flat, dst=worker)
            self.seen[worker] = self.done
            self.held.remove(worker)

    def optimizer_step(self, gradient_sum, step):
        """One optimizer step on the mean of n−1 gradients, as ps takes it, at the learning rate
        of `step` (the loop set its own step's; with s > 0 the step completed may lag behind it)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr_at(step)
        for p in self.params:  # the dedicated server has no grads of its own
            if p.grad is None:
                p.grad = torch.empty_like(p)
        unflatten_into(gradient_sum / len(self.workers), [p.grad for p in self.params])
        self.optimizer.step()

    def current_parameters(self):
        """The parameters to send: the last complete step, plus a provisional optimizer step
        with the gradients of incomplete steps (their sum ÷ (n−1)), taken and then undone."""
        flat = flatten([p.detach() for p in self.params])  # a copy: torch.cat
        if not self.pending:  # always so with s = 0
            return flat
        saved = copy.deepcopy(self.optimizer.state_dict())  # momentum buffers, by value
        self.optimizer_step(sum(self.pending.values()), self.done + 1)
        provisional = flatten([p.detach() for p in self.params])
        with torch.no_grad():
            unflatten_into(flat, self.params)
        self.optimizer.load_state_dict(saved)
        return provisional

    def update(self, optimizer, scaler=None):
        pass  # the server steps inside sync_gradients, as each step completes; workers never do

    def sync_parameters(self, model):  # pull: the server's reply, once the bound allows it
        if self.rank == SERVER:
            return
        flat = flatten([p.detach() for p in self.params])
        dist.recv(flat, src=SERVER)
        with torch.no_grad():
            unflatten_into(flat, self.params)

    @contextlib.contextmanager
    def whole_model(self, model):
        """Validation scores the server's model on every rank (the one checkpoint.pt keeps): with
        s > 0 a worker's own copy may be up to s steps behind or provisional. Each worker gets its
        own back afterwards, so the bound and the staleness it records stay exact."""
        own = flatten([p.detach() for p in self.params])
        server = own.clone()
        dist.broadcast(server, src=SERVER)  # validation, not a step: the loop counts steps only
        with torch.no_grad():
            unflatten_into(server, self.params)
        try:
            yield model
        finally:
            with torch.no_grad():
                unflatten_into(own, self.params)

    def after_step(self, model) -> dict:  # for rank 0's step record: each gradient's staleness
        return {"staleness": list(self.staleness)} if self.rank == SERVER else {}
