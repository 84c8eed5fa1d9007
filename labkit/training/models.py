"""The models: torchvision's ResNets, a 32 px ResNet-18, and a BatchNorm-free CNN.

`resnet50` / `resnet18` are torchvision's, unchanged, from random init (the original
experiment trains from scratch). `resnet18_small` swaps the 7×7 stride-2 stem for a
3×3 stride-1 conv so 32 px images keep enough resolution. `simple_cnn` has no
BatchNorm: without BatchNorm, data-parallel training makes the update single-process
training makes on the global batch, which the equivalence tests use.

With BatchNorm it cannot: each rank normalizes over its own images. `--set sync_bn=true`
(`with_sync_batch_norm`) turns every BatchNorm into torch's SyncBatchNorm (on CPUs,
`CpuSyncBatchNorm`), which normalizes over the global batch: one collective in each
BatchNorm's forward and one in its backward (tests/test_sync_bn.py, notebook 02b).
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision

from labkit.config import MODELS
from labkit.errors import ConfigError

# One function per name in config.MODELS (the list a config is checked against before any
# torch import); build_model finds the function by that name.


def resnet50(num_classes: int) -> nn.Module:
    return torchvision.models.resnet50(num_classes=num_classes)


def resnet18(num_classes: int) -> nn.Module:
    return torchvision.models.resnet18(num_classes=num_classes)


def resnet18_small(num_classes: int) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


def simple_cnn(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


class SyncBatchNormCount:
    """What the SyncBatchNorm layers sent on this rank since `reset()`: their collectives
    (calls) and the bytes this rank sends for them, by the ring as the lab counts every
    collective (an all-reduce of S bytes over n ranks sends 2(n−1)/n·S, an all-gather into
    S bytes (n−1)/n·S; gloo and NCCL alike for these), counted by the layers themselves so
    that what SyncBatchNorm adds is known apart from the step's bytes_sent. The recorder
    resets it before each step and adds `record()` to the step's record."""

    def __init__(self, world: int):
        self.world = world
        self.reset()

    def reset(self):
        self.calls, self.bytes_sent = 0, 0.0

    def all_reduce(self, nbytes: int):
        self.calls += 1
        self.bytes_sent += 2 * (self.world - 1) / self.world * nbytes

    def all_gather(self, nbytes: int):
        self.calls += 1
        self.bytes_sent += (self.world - 1) / self.world * nbytes

    def record(self) -> dict:
        return {"sync_bn_calls": self.calls, "sync_bn_bytes_sent": self.bytes_sent}


class AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: each rank's input reaches every rank's loss,
    so its gradient is the sum of every rank's gradient — one more all-reduce, in backward.
    Both are counted on `count` (a SyncBatchNormCount)."""

    @staticmethod
    def forward(ctx, tensor, group, count):
        ctx.group, ctx.count = group, count
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        count.all_reduce(total.numel() * total.element_size())
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        ctx.count.all_reduce(grad.numel() * grad.element_size())
        return grad, None, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU ranks. torch's refuses a CPU tensor (its fused kernels exist
    only for GPUs, and DDP refuses it on a CPU model), so in training this one sums
    [Σx, Σx², count] over the ranks in one all-reduce, whose backward is the all-reduce of
    the statistics' gradients: the same two collectives per layer as torch's (an all-reduce
    standing in for its all-gather), 2C + 1 values each. In eval it is plain BatchNorm on
    the running stats, with no collective."""

    sync_bn_count: SyncBatchNormCount  # set by with_sync_batch_norm

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]  # every axis but the channels
        local = torch.cat([input.sum(dims), (input * input).sum(dims),
                           input.new_full((1,), input.numel() // input.size(1))])
        total = AllReduceSum.apply(local, dist.group.WORLD, self.sync_bn_count)
        channels, n = input.size(1), total[-1]
        mean = total[:channels] / n
        var = total[channels:-1] / n - mean * mean  # E[x²] − E[x]² over the global batch
        if self.track_running_stats:
            self.update_running_stats(mean.detach(), var.detach(), n.item())
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def update_running_stats(self, mean, var, n):
        """As BatchNorm does: a moving average of the mean and of the unbiased variance."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * n / (n - 1), factor)


def count_torch_sync_bn(count: SyncBatchNormCount):
    """A forward hook for torch's nn.SyncBatchNorm (GPUs), which counts what the layer sends
    from its input's shape, as torch/nn/modules/_functions.py makes it: in a training forward
    on more than one rank, one all-gather of [mean, invstd, count] (2C + 1 values from each
    rank), and, where the input needs a gradient, one all-reduce of [Σdy, Σdy·(x − mean)]
    (2C values) in its backward, counted here, in the forward that makes it certain. Its
    statistics are float32 for a half-precision input, else the input's dtype."""

    def hook(module, args, output):
        x, world = args[0], count.world
        if not module.training or world < 2:
            return  # torch's own condition for a synchronized forward
        c = x.size(1)
        size = 4 if x.dtype in (torch.float16, torch.bfloat16) else x.element_size()
        count.all_gather(world * (2 * c + 1) * size)
        if torch.is_grad_enabled() and x.requires_grad:
            count.all_reduce(2 * c * size)

    return hook


def with_sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` normalizing over the global batch (the default process
    group). Both ways keep the same parameter and buffer tensors, so the optimizer built
    before and a restored checkpoint still hold them. `model.sync_bn_count` (a
    SyncBatchNormCount) counts the layers' collectives; the recorder reads it per step."""
    count = SyncBatchNormCount(dist.get_world_size() if dist.is_initialized() else 1)
    if device.type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch's own
        for module in model.modules():
            if isinstance(module, nn.SyncBatchNorm):
                module.register_forward_hook(count_torch_sync_bn(count))
    else:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.__class__ = CpuSyncBatchNorm  # same attributes, the forward above
                module.sync_bn_count = count
    model.sync_bn_count = count
    return model


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    return globals()[name](num_classes)
