"""Validation counts the images it measured on: the N of the accuracy's binomial error."""

from types import SimpleNamespace

import torch

from labkit.training.evaluate import validate


def test_validation_reports_how_many_images_it_measured():
    """30 images in batches of 8 (a short last batch): val_images = 30, and top-1 is a share of them."""
    images, labels = torch.randn(30, 4), torch.arange(30) % 3
    loader = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 30, 8)]
    model = torch.nn.Linear(4, 3)
    cfg = SimpleNamespace(amp="off", dtype="float32")
    stats = validate(model, loader, torch.device("cpu"), cfg, SimpleNamespace(touch=lambda: None))
    assert stats["val_images"] == 30 and isinstance(stats["val_images"], int)
    correct = stats["val_top1"] * 30 / 100
    assert abs(correct - round(correct)) < 1e-9  # a whole number of the 30 images
