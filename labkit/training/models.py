"""The models: torchvision's ResNets, a 32 px ResNet-18, and a BatchNorm-free CNN.

`resnet50` / `resnet18` are torchvision's, unchanged, from random init (the original
experiment trains from scratch). `resnet18_small` swaps the 7×7 stride-2 stem for a
3×3 stride-1 conv so 32 px images keep enough resolution. `simple_cnn` has no
BatchNorm: without BatchNorm, data-parallel training makes the update single-process
training makes on the global batch, which the equivalence tests use.
"""

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


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    return globals()[name](num_classes)
