"""My FSDP by hand (ZeRO-3): each rank keeps 1/n of every layer; a layer is whole only while it computes.

As PyTorch's FSDP2 (`fully_shard`, one unit per layer): all-gather before forward and backward,
reduce-scatter after backward, an optimizer that only knows the shards. Source: ZeRO stage 3
(Rajbhandari et al., SC 2020) and FSDP2's storage resizing (`torch.distributed.fsdp`).

Optional part, a gather dtype (`--set param_dtype=bf16`, as FSDP2's MixedPrecisionPolicy): the
shards and the optimizer keep the model's dtype (the master weights); each gather sends the
shards in bf16, half the bytes, so a layer computes with its weights rounded to bf16. The
reduce-scatter stays in the model's dtype here (reduce_dtype=fp32).
"""
import contextlib
import functools
import math

import torch
import torch.distributed as dist

from labkit.strategies.base import About, Strategy, flatten, optimizer_state_tensors


def free(full):
    """Give back a tensor's memory; it keeps its shape, and every view of it (its layer's parameters,
    and what autograd saved of them) keeps pointing at the same, now empty, storage."""
    full.untyped_storage().resize_(0)


def allocate(full):
    """Memory for a freed tensor again (its values are garbage until written)."""
    full.untyped_storage().resize_(full.numel() * full.element_size())


def refuse(cfg, o) -> str:
    if cfg.accumulate > 1 or cfg.amp == "fp16":  # each backward reduce-scatters; a scaler would see a shard
        return "my_fsdp.py runs without --set accumulate and without amp=fp16"
    if cfg.param_dtype == "fp16" or cfg.reduce_dtype not in ("", "fp32"):  # fp16 needs a loss scaler
        return ("my_fsdp.py gathers in fp32 or bf16 (--set param_dtype=bf16) and reduce-scatters in "
                "the model's dtype; leave reduce_dtype unset")
    return ""


class MyFSDP(Strategy):
    about = About(refuse=refuse,
                  overlaps_backward=True,  # gathers and reduce-scatters run inside forward and backward
                  mixed_precision=True)  # the optional part: the lab lets --set param_dtype=bf16 through to gather

    def gather_dtype(self, full):
        """The dtype the shards travel in: bf16 with --set param_dtype=bf16, else the layer's own."""
        return torch.bfloat16 if self.cfg.param_dtype == "bf16" else full.dtype

    def prepare(self, model, optimizer):
        # A layer: a module with parameters of its own (the MLP's Linear layers).
        self.layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
        self.params = [list(layer.parameters(recurse=False)) for layer in self.layers]
        self.full = []  # per layer: one flat buffer of n·shard_len values; its parameters are views of it
        self.shards = []  # per layer: an nn.Parameter, this rank's slice of that buffer, kept between uses
        self.arrived = [0] * len(self.layers)  # gradients arrived so far in this backward, per layer
        for index, params in enumerate(self.params):
            shard_len = math.ceil(sum(p.numel() for p in params) / self.world)  # pad: equal shards
            flat = torch.nn.functional.pad(flatten([p.detach() for p in params]),
                                           (0, shard_len * self.world - sum(p.numel() for p in params)))
            offset = 0
            for p in params:  # .data, not copy_: autograd must not count this as changing p
                p.data = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
            self.full.append(flat)
            # Keep this rank's shard as its own nn.Parameter (a copy), then free the full buffer;
            # register the hooks: self.gather(index) before the layer's forward, self.after_forward(index,
            # output) after it, self.on_grad_ready(index, param) once per parameter's gradient.
            ### BEGIN SOLUTION
            self.shards.append(torch.nn.Parameter(flat[self.rank * shard_len:(self.rank + 1) * shard_len].clone()))
            free(flat)
            self.layers[index].register_forward_pre_hook(lambda module, args, i=index: self.gather(i))
            self.layers[index].register_forward_hook(lambda module, args, output, i=index: self.after_forward(i, output))
            for p in params:
                p.register_post_accumulate_grad_hook(functools.partial(self.on_grad_ready, index))
            ### END SOLUTION
        # The optimizer steps the shards only: 1/n of its state on each rank. Built as torch's
        # ZeroRedundancyOptimizer builds its own: the loop's class and param group, the shards as params.
        self.shard_optimizer = type(optimizer)([{**optimizer.param_groups[0], "params": self.shards}])
        return model

    def gather(self, index):
        """Layer `index` whole again: every rank's shard of it, in rank order, in self.full[index].
        Optional part: when self.gather_dtype(full) is not full's dtype (param_dtype=bf16), the
        shards travel in that dtype (gathered into a buffer of their own, then copied into full)."""
        ### BEGIN SOLUTION
        full = self.full[index]
        allocate(full)
        dtype = self.gather_dtype(full)
        gathered = full if dtype == full.dtype else torch.empty(full.numel(), dtype=dtype)
        dist.all_gather_single(gathered, self.shards[index].detach().to(dtype))  # .to: no copy when equal
        if gathered is not full:
            full.copy_(gathered)
        ### END SOLUTION

    def after_forward(self, index, output):
        """Free layer `index`; have it gathered again when backward reaches it. A hook on the
        output tensor fires when the gradient for it arrives, just before the layer's backward
        (as FSDP2 does; a module's full backward hook would wrap the output in a view that
        in-place ops such as ReLU(inplace=True) refuse)."""
        ### BEGIN SOLUTION
        free(self.full[index])
        if torch.is_grad_enabled() and output.requires_grad:  # not in validation (no_grad)
            output.register_hook(lambda grad: self.gather(index))
        ### END SOLUTION

    def on_grad_ready(self, index, param):
        """Inside backward, once per parameter: when the last gradient of layer `index` has arrived,
        its shard's .grad becomes the average over all ranks of this rank's slice of the layer's
        gradients; then the full gradients and the full parameters are freed."""
        self.arrived[index] += 1
        if self.arrived[index] < len(self.params[index]):
            return
        self.arrived[index] = 0
        params, shard = self.params[index], self.shards[index]
        ### BEGIN SOLUTION
        grads = flatten([p.grad for p in params])
        grads = torch.nn.functional.pad(grads, (0, self.full[index].numel() - grads.numel())) / self.world
        shard.grad = torch.empty_like(shard)
        dist.reduce_scatter_single(shard.grad, grads, op=dist.ReduceOp.SUM)
        for p in params:
            p.grad = None
        free(self.full[index])
        ### END SOLUTION

    def update(self, optimizer, scaler=None):
        """Step the shards only, at the loop's learning rate (it changes during warm-up)."""
        for group in self.shard_optimizer.param_groups:
            group["lr"] = optimizer.param_groups[0]["lr"]
        super().update(self.shard_optimizer, scaler)

    # -- given: what the check and the lab need beyond a step -----------------------------
    @contextlib.contextmanager
    def whole_model(self, model):
        """The model whole, for validation, checkpoint.pt and the check's comparison with DDP: every
        layer gathered once (ranks may run different numbers of batches, so a forward must need no
        collective), the hooks idle, all freed after. A collective: every rank calls it."""
        for index in range(len(self.layers)):
            self.gather(index)
        self.gather = self.after_forward = lambda *args: None  # the hooks idle (they look these up)
        try:
            yield model
        finally:
            del self.gather, self.after_forward  # the class's own methods again
            for full in self.full:
                free(full)

    def held_tensors(self):  # for the lab's memory count: this rank's shards, their gradients, their momentum
        return {"params": self.shards, "grads": [shard.grad for shard in self.shards],
                "optimizer_state": optimizer_state_tensors(self.shard_optimizer)}

    def state_dict(self):
        return {"shard_optimizer": self.shard_optimizer.state_dict()}

    def load_state_dict(self, state):  # a checkpoint's momentum, of this rank's shards
        self.shard_optimizer.load_state_dict(state["shard_optimizer"])
