"""The tiny generated dataset: ten 32 px pictures of patterns, in ImageFolder layout.

Generated on first need: when a job that reads it starts (`Job.start` calls
`make_for(cfg)`), or by `labkit data tiny` / notebook 00. Checking a config never writes
it (profiles check its known shape, `TINY_SHAPE`, until it exists). Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = ("hstripes", "vstripes", "diag_up", "diag_down", "checker",
                "ring", "disc", "cross", "dots", "square")
TRAIN_PER_CLASS, VAL_PER_CLASS = 64, 30
TINY_SHAPE = {"classes": len(TINY_CLASSES), "train_images": TRAIN_PER_CLASS * len(TINY_CLASSES)}


def is_made(root: Path) -> bool:
    """Whether the tiny set is already at `root` (generation renames it into place whole)."""
    return (Path(root) / "train").is_dir() and (Path(root) / "val").is_dir()


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


def make_tiny(root: Path, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
              val_per_class: int = VAL_PER_CLASS) -> Path:
    """Write the tiny 10-class set as JPEGs in ImageFolder layout; deterministic from `seed`.

    64 training images a class give 10 steps an epoch at the cpu profile's global batch
    of 64 (4 ranks × 16): enough to learn well above chance (10 %) in 3 epochs, small
    enough that the whole notebook lab runs in under ten minutes on two cores (at 96 a
    class, 15 steps an epoch, it took 16 minutes).
    Written into a temporary folder renamed into place at the end, so an interrupted
    generation never leaves a half-made dataset that looks finished.
    """
    root = Path(root)
    if is_made(root):
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


def make_for(cfg) -> None:
    """Generate the tiny set a run reads, the first time one needs it (before its job starts).
    A run on any other dataset reads what the user prepared; nothing is made for it."""
    if cfg.dataset == "tiny":
        make_tiny(Path(cfg.data_dir), seed=0)
