"""Datasets and loaders: ImageNet/ImageFolder, the generated tiny set, synthetic batches.

Every rank reads a disjoint shard of each epoch through DistributedSampler, so the
global batch at step t is the same whatever the world size — that is what lets the
tests compare strategies (and world sizes) parameter for parameter. With gradient
accumulation an optimizer step takes `accumulate` consecutive loader batches of this
shard (`epoch_steps`): the very images one batch `accumulate` times larger would hold.
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from labkit.config import RunConfig
from labkit.datasets.folders import data_root

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- datasets and loaders --------------------------------------------------------------

def image_transforms(cfg: RunConfig, train: bool):
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    size = cfg.image_size
    if size >= 128:  # the standard ImageNet recipe
        if train and cfg.augment:
            steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)]
    else:  # small images: CIFAR-style padding crop, no flip (tiny's diagonals are mirror pairs)
        steps = [transforms.Resize(size)]
        if train and cfg.augment:
            steps += [transforms.RandomCrop(size, padding=size // 8)]
    return transforms.Compose(steps + [transforms.ToTensor(), normalize])


class SyntheticLoader:
    """Random batches made on the device: compute + comms only, no loading.

    Each rank draws its own batch at each step, from a generator seeded by (seed, data
    rank, step): ranks see different data, as with a real dataset, so a method that
    failed to synchronize would drift apart from DDP here too; the same step always
    gives the same batch, so a resume continues the same data."""

    def __init__(self, cfg: RunConfig, device: torch.device, data_rank: int = 0):
        self.cfg, self.device, self.data_rank = cfg, device, data_rank
        self.generator = torch.Generator(device=device)  # drawn where it is used: no host work, no copy
        self.steps = cfg.synthetic_steps * cfg.accumulate  # batches: synthetic_steps optimizer steps an epoch
        self.sampler = None

    def __len__(self):
        return self.steps

    def batch(self, step: int):
        """The batch of this rank at global step `step` (0-based; micro-batch, when accumulating)."""
        cfg = self.cfg
        self.generator.manual_seed((cfg.seed * 1_000_003 + self.data_rank) * 1_000_003 + step)
        images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=self.generator,
                             device=self.device)
        labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=self.generator, device=self.device)
        return images, labels

    def epoch(self, epoch: int, skip_steps: int = 0):
        """The batches of one epoch from batch `skip_steps` on (none of the skipped is drawn)."""
        return (self.batch(epoch * self.steps + i) for i in range(skip_steps, self.steps))

    def __iter__(self):
        return self.epoch(0)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start its next epoch part-way through (a resume)."""

    skip = 0  # samples of this rank's shard to leave out, for the next epoch only

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def epoch_batches(loader, epoch: int, skip_steps: int, batch_size: int):
    """The batches of one epoch, from batch `skip_steps` on (0 unless resuming)."""
    if isinstance(loader.sampler, ResumableSampler):
        loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        loader.sampler.skip = skip_steps * batch_size
        return iter(loader)
    if isinstance(loader, SyntheticLoader):
        return loader.epoch(epoch, skip_steps)
    return itertools.islice(iter(loader), skip_steps, None)


def steps_per_epoch(loader, accumulate: int) -> int:
    """Optimizer steps in one epoch: whole groups of `accumulate` batches (a short tail is dropped,
    as drop_last drops a short batch: every step averages the same number of images)."""
    return len(loader) // accumulate


def epoch_steps(loader, epoch: int, step_in_epoch: int, cfg: RunConfig):
    """The optimizer steps left in one epoch (from `step_in_epoch` on: a resume skips
    accumulate × that many batches), each a group of cfg.accumulate micro-batches. A group
    is drawn lazily as train_step takes it: one micro-batch in memory at a time, and each
    one's loading timed where it happens (its data_s)."""
    batches = epoch_batches(loader, epoch, step_in_epoch * cfg.accumulate, cfg.batch_size)
    for _ in range(steps_per_epoch(loader, cfg.accumulate) - step_in_epoch):
        yield itertools.islice(batches, cfg.accumulate)  # train_step takes all of it before the next


def build_loaders(cfg: RunConfig, data_rank: int, data_ranks: int, rank: int, world: int, device):
    """(train loader, val loader or None). The val set is split without padding so
    no image is counted twice: rank r takes images r, r+world, r+2·world, …"""
    if cfg.dataset == "synthetic":
        return SyntheticLoader(cfg, device, data_rank), None
    root = data_root(cfg)
    train_set = datasets.ImageFolder(root / "train", image_transforms(cfg, train=True))
    val_set = datasets.ImageFolder(root / "val", image_transforms(cfg, train=False))
    sampler = ResumableSampler(train_set, num_replicas=data_ranks, rank=data_rank,
                                 shuffle=True, seed=cfg.seed)
    # drop_last: every step has the same batch on every rank, so averages are exact.
    train = DataLoader(train_set, cfg.batch_size, sampler=sampler, drop_last=True,
                       **loader_options(cfg.workers, device, persistent=True))
    val_shard = Subset(val_set, range(rank, len(val_set), world))
    # Validation runs once an epoch on a center crop (no augmentation): a quarter of the
    # workers, started for it and gone after, rather than 16 more idle processes per rank.
    val = DataLoader(val_shard, cfg.batch_size, shuffle=False,
                     **loader_options(val_workers(cfg.workers), device, persistent=False))
    return train, val


def val_workers(train_workers: int) -> int:
    """Loader workers for validation: a quarter of the training loader's (none if it has none)."""
    return max(1, train_workers // 4) if train_workers > 0 else 0


def loader_options(workers: int, device, persistent: bool) -> dict:
    # forkserver: loader workers start from a clean process, not forked from a rank whose
    # gloo/NCCL threads may hold a lock at that instant (a fork can then hang the child).
    return dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                multiprocessing_context="forkserver" if workers > 0 else None)
