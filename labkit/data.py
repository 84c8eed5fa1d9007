"""Datasets and loaders: ImageNet/ImageFolder, the generated tiny set, synthetic batches.

Every rank reads a disjoint shard of each epoch through DistributedSampler, so the
global batch at step t is the same whatever the world size — that is what lets the
tests compare strategies (and world sizes) parameter for parameter.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from .config import LAB_ROOT, ConfigError, RunConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_CLASSES = ("hstripes", "vstripes", "diag_up", "diag_down", "checker",
                "ring", "disc", "cross", "dots", "square")


def data_root(cfg: RunConfig) -> Path:
    """Where the dataset lives: the user's data_dir, or the lab's data/<dataset>."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser().resolve()
    return LAB_ROOT / "data" / cfg.dataset


# -- the tiny dataset -----------------------------------------------------------------

def _tiny_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One 32 px picture of pattern `label` in a random colour, offset and noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 9)
    cy, cx = rng.uniform(10, 22, size=2)
    r = np.hypot(y - cy, x - cx)
    name = TINY_CLASSES[label]
    masks = {
        "hstripes": np.sin(2 * np.pi * y / period) > 0,
        "vstripes": np.sin(2 * np.pi * x / period) > 0,
        "diag_up": np.sin(2 * np.pi * (x + y) / period) > 0,
        "diag_down": np.sin(2 * np.pi * (x - y) / period) > 0,
        "checker": (np.sin(2 * np.pi * x / period) > 0) ^ (np.sin(2 * np.pi * y / period) > 0),
        "ring": np.abs(r - rng.uniform(6, 10)) < 2,
        "disc": r < rng.uniform(5, 9),
        "cross": (np.abs(y - cy) < 2) | (np.abs(x - cx) < 2),
        "dots": (np.sin(2 * np.pi * x / period) > 0.7) & (np.sin(2 * np.pi * y / period) > 0.7),
        "square": (np.abs(y - cy) < 6) & (np.abs(x - cx) < 6),
    }
    bg = rng.uniform(0, 255, size=3)
    fg = (bg + rng.uniform(80, 176, size=3)) % 256  # always a clear contrast with the background
    image = np.where(masks[name][..., None], fg, bg) + rng.normal(0, 20, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_tiny(root: Path, seed: int = 0, train_per_class: int = 96, val_per_class: int = 30) -> Path:
    """Write the tiny 10-class set as JPEGs in ImageFolder layout; deterministic from `seed`.

    96 training images a class give 15 steps an epoch at the cpu profile's global batch
    of 64 (4 ranks × 16): enough to learn to ~50 % top-1 in 3 epochs (chance: 10 %), small
    enough that the whole notebook lab runs in under ten minutes on two cores.
    Written into a temporary folder renamed into place at the end, so an interrupted
    generation never leaves a half-made dataset that looks finished.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(TINY_CLASSES):
            folder = tmp / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_tiny_image(label, rng)).save(folder / f"{i:04d}.jpg", quality=90)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first (root exists, not empty)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# -- checks done before launch ---------------------------------------------------------

def check_image_folder(split_dir: Path) -> int:
    """Raise ConfigError unless `split_dir` is a usable ImageFolder; return the class count."""
    if not split_dir.is_dir():
        raise ConfigError(f"dataset folder {split_dir} not found; prepare it "
                          f"(labkit data prepare-imagenet, or --set data_dir=PATH)")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise ConfigError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    for name in classes:
        folder = split_dir / name
        if not any(datasets.folder.is_image_file(f) for _, _, files in os.walk(folder) for f in files):
            raise ConfigError(f"class folder {folder} holds no image; add images or remove the folder"
                              + (" (hidden folders count as classes)" if name.startswith(".") else ""))
    return len(classes)


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
    """One random batch made on the device, served `steps` times: compute + comms only."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
        labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=generator)
        self.batch = (images.to(device), labels.to(device))
        self.steps = cfg.synthetic_steps
        self.sampler = None

    def __len__(self):
        return self.steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start its next epoch part-way through (a resume)."""

    skip = 0  # samples of this rank's shard to leave out, for the next epoch only

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def epoch_batches(loader, epoch: int, skip_steps: int, batch_size: int):
    """The batches of one epoch, from step `skip_steps` on (0 unless resuming)."""
    if isinstance(loader.sampler, ResumableSampler):
        loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        loader.sampler.skip = skip_steps * batch_size
        return iter(loader)
    return itertools.islice(iter(loader), skip_steps, None)  # synthetic: nothing to load


def build_loaders(cfg: RunConfig, data_rank: int, data_ranks: int, rank: int, world: int, device):
    """(train loader, val loader or None). The val set is split without padding so
    no image is counted twice: rank r takes images r, r+world, r+2·world, …"""
    if cfg.dataset == "synthetic":
        return SyntheticLoader(cfg, device), None
    root = data_root(cfg)
    train_set = datasets.ImageFolder(root / "train", image_transforms(cfg, train=True))
    val_set = datasets.ImageFolder(root / "val", image_transforms(cfg, train=False))
    sampler = ResumableSampler(train_set, num_replicas=data_ranks, rank=data_rank,
                                 shuffle=True, seed=cfg.seed)
    # forkserver: loader workers start from a clean process, not forked from a rank whose
    # gloo/NCCL threads may hold a lock at that instant (a fork can then hang the child).
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                  multiprocessing_context="forkserver" if cfg.workers > 0 else None)
    # drop_last: every step has the same batch on every rank, so averages are exact.
    train = DataLoader(train_set, cfg.batch_size, sampler=sampler, drop_last=True, **common)
    val_shard = Subset(val_set, range(rank, len(val_set), world))
    val = DataLoader(val_shard, cfg.batch_size, shuffle=False, **common)
    return train, val
