"""ImageFolder datasets on disk (`root/<split>/<class>/<image>`): where a run's dataset lives,
and the checks any such folder passes before a job is launched.

Used by the checks before launch (profiles) and by the training data (training/data.py),
so nothing here imports torch or torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

from labkit.config import LAB_ROOT, ConfigError

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder reads, without importing torch
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def data_root(cfg) -> Path:
    """Where the dataset lives: the user's data_dir, or the lab's data/<dataset>."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser().resolve()
    return LAB_ROOT / "data" / cfg.dataset


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
        if not any(is_image_file(f) for _, _, files in os.walk(folder) for f in files):
            raise ConfigError(f"class folder {folder} holds no image; add images or remove the folder"
                              + (" (hidden folders count as classes)" if name.startswith(".") else ""))
    return len(classes)
