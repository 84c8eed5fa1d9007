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


class AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: each rank's input reaches every rank's loss,
    so its gradient is the sum of every rank's gradient — one more all-reduce, in backward."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU ranks. torch's refuses a CPU tensor (its fused kernels exist
    only for GPUs, and DDP refuses it on a CPU model), so in training this one sums
    [Σx, Σx², count] over the ranks in one all-reduce, whose backward is the all-reduce of
    the statistics' gradients: the same two collectives per layer as torch's (an all-reduce
    standing in for its all-gather). In eval it is plain BatchNorm on the running stats."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]  # every axis but the channels
        local = torch.cat([input.sum(dims), (input * input).sum(dims),
                           input.new_full((1,), input.numel() // input.size(1))])
        total = AllReduceSum.apply(local, dist.group.WORLD)
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


def with_sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` normalizing over the global batch (the default process
    group). Both ways keep the same parameter and buffer tensors, so the optimizer built
    before and a restored checkpoint still hold them."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch's own
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.__class__ = CpuSyncBatchNorm  # same attributes, the forward above
    return model


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    return globals()[name](num_classes)
