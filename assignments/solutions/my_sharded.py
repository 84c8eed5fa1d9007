"""My sharded parameter server: every rank owns 1/n of the parameters and optimizer state."""
import math

import torch
import torch.distributed as dist

from labkit.strategies.base import About, Strategy, flatten, optimizer_state_tensors, unflatten_into


def refuse(cfg, o) -> str:
    if cfg.amp == "fp16":  # each rank's loss scaler would see only its shard: ranks could skip different steps
        return "my_sharded.py runs without amp=fp16 (each rank's loss scaler sees only its shard); use --set amp=bf16"
    return ""


class MySharded(Strategy):
    about = About(refuse=refuse)

    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.params)
        self.shard_len = math.ceil(total / self.world)  # every shard the same length
        self.padded = self.shard_len * self.world
        # self.shard: an nn.Parameter, a copy of this rank's slice of the (padded) flat parameters;
        # self.shard_optimizer: an optimizer like the loop's (its class, its param group's
        # hyperparameters: SGD's momentum or AdamW's betas) that only knows self.shard.
        ### BEGIN SOLUTION
        flat = self.pad(flatten([p.detach() for p in self.params]))
        mine = flat[self.rank * self.shard_len:(self.rank + 1) * self.shard_len]
        self.shard = torch.nn.Parameter(mine.clone())
        self.shard_optimizer = type(optimizer)([{**optimizer.param_groups[0], "params": [self.shard]}])
        ### END SOLUTION
        return model

    def pad(self, flat):
        return torch.nn.functional.pad(flat, (0, self.padded - flat.numel()))

    def sync_gradients(self, model):
        """self.shard.grad becomes the average, over all ranks, of this rank's slice of the gradients."""
        ### BEGIN SOLUTION
        grads = self.pad(flatten([p.grad for p in self.params])) / self.world
        self.shard.grad = torch.empty_like(self.shard)
        dist.reduce_scatter_single(self.shard.grad, grads, op=dist.ReduceOp.SUM)
        ### END SOLUTION

    def update(self, optimizer, scaler=None):
        """Step this rank's shard only, at the loop's learning rate (it changes during warm-up)."""
        ### BEGIN SOLUTION
        for group in self.shard_optimizer.param_groups:
            group["lr"] = optimizer.param_groups[0]["lr"]
        super().update(self.shard_optimizer, scaler)
        ### END SOLUTION

    def sync_parameters(self, model):
        """Every rank's model ends with every rank's updated shard."""
        ### BEGIN SOLUTION
        flat = torch.empty(self.padded, dtype=self.shard.dtype, device=self.shard.device)
        dist.all_gather_single(flat, self.shard.detach())
        with torch.no_grad():
            unflatten_into(flat, self.params)
        ### END SOLUTION

    # -- given: what the lab needs beyond a step -----------------------------------------
    def held_tensors(self):  # for the lab's memory count: this rank's shard, its gradient, its optimizer state
        return {"params": [self.shard], "grads": [self.shard.grad],
                "optimizer_state": optimizer_state_tensors(self.shard_optimizer)}

    def state_dict(self):  # every rank steps its own shard: a checkpoint keeps each rank's optimizer state
        return {"shard_optimizer": self.shard_optimizer.state_dict()}

    def load_state_dict(self, state):  # a resumed run keeps its momentum
        self.shard_optimizer.load_state_dict(state["shard_optimizer"])
