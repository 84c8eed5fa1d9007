"""Validation: loss, top-1 and top-5 over the whole val set, and the autocast context."""

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from labkit.training.process_group import all_reduce_sum


def autocast(cfg, device):
    if cfg.amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def validate(model, loader, device, cfg, heartbeat) -> dict:
    """Sums and counts are added across ranks, so each image counts once whatever the shard sizes."""
    model.eval()
    dtype = getattr(torch, cfg.dtype)
    loss_sum = top1 = top5 = count = 0.0
    with torch.no_grad(), autocast(cfg, device):
        for images, labels in loader:
            heartbeat.touch()
            images, labels = images.to(device, dtype, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += (best[:, 0] == labels).sum().item()
            top5 += (best == labels[:, None]).any(dim=1).sum().item()
            count += labels.numel()
    model.train()
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], device)
    # val_images: the N of the accuracy's binomial error, √(p(1−p)/N) (docs/EXPERIMENT_GUIDE.md)
    return {"val_loss": loss_sum / count, "val_top1": 100 * top1 / count, "val_top5": 100 * top5 / count,
            "val_images": int(count)}
