"""Check a prepared ImageFolder tree, carve a smaller subset out of it, fetch Kaggle's copy.

`verify` reports what would bite later: missing or empty classes, images left flat in
val/ instead of a class folder, hidden or stray folders (ImageFolder takes *any* folder
for a class: a `.ipynb_checkpoints` would become class 0), and with `decode=True` every
image that cannot be opened as RGB. ImageNet has a PNG named .JPEG and CMYK JPEGs:
PIL reads both by content and `.convert("RGB")` handles them, so they are not errors.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import is_image_file
from tqdm import tqdm

from labkit.config import ConfigError

FULL_IMAGENET = {"classes": 1000, "train": 1_281_167, "val": 50_000}


def open_as_rgb(path: str) -> str | None:
    """None if the image decodes to RGB, else the reason it does not."""
    try:
        with Image.open(path) as image:
            image.convert("RGB").load()
        return None
    except Exception as error:  # PIL raises many kinds for broken files
        return f"{type(error).__name__}: {error}"


def verify(root, decode: bool = False, workers: int = 4) -> dict:
    root = Path(root)
    report = {"root": str(root), "problems": [], "splits": {}}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            report["problems"].append(f"{split}/ is missing")
            continue
        entries = list(os.scandir(folder))
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        hidden = sorted(e.name for e in entries if e.is_dir() and e.name.startswith("."))
        loose = [e.name for e in entries if e.is_file()]
        counts = {c: sum(1 for f in os.listdir(folder / c) if is_image_file(f)) for c in classes}
        report["splits"][split] = {"classes": len(classes), "images": sum(counts.values())}
        report["problems"] += [f"{split}/{name}/ is a hidden folder: ImageFolder would take it for a class; remove it"
                               for name in hidden]
        report["problems"] += [f"{split}/{c}/ has no image" for c, n in counts.items() if n == 0]
        if loose:
            report["problems"].append(f"{split}/ has {len(loose)} file(s) outside any class folder "
                                      f"(e.g. {loose[0]}): the val set must be sorted into class folders")
        if decode:
            paths = [str(folder / c / f) for c in classes for f in os.listdir(folder / c) if is_image_file(f)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                errors = list(tqdm(pool.map(open_as_rgb, paths, chunksize=64), total=len(paths),
                                   desc=f"decode {split}", unit="img"))
            report["problems"] += [f"unreadable: {p} ({e})" for p, e in zip(paths, errors) if e]
    splits = report["splits"]
    if "train" in splits and "val" in splits and splits["train"]["classes"] != splits["val"]["classes"]:
        report["problems"].append(f"train has {splits['train']['classes']} classes but val {splits['val']['classes']}")
    report["full_imagenet"] = splits.get("train", {}).get("images") == FULL_IMAGENET["train"] and \
        splits.get("val", {}).get("images") == FULL_IMAGENET["val"]
    return report


def subset(src, dst, classes: int, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A smaller ImageFolder of symbolic links (e.g. ImageNet-100), the same for the same seed."""
    src, dst = Path(src).resolve(), Path(dst)
    available = sorted(p.name for p in (src / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes > len(available):
        raise ConfigError(f"--classes {classes} but {src / 'train'} has only {len(available)}")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(available, classes))
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for wnid in chosen:
            images = sorted(f for f in os.listdir(src / split / wnid) if is_image_file(f))
            (tmp / split / wnid).mkdir(parents=True)
            for name in sorted(rng.sample(images, min(per_class, len(images)))):
                (tmp / split / wnid / name).symlink_to(src / split / wnid / name)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


KAGGLE_COMPETITION = "imagenet-object-localization-challenge"


def download_kaggle(dst) -> None:
    """Kaggle's copy through the kaggle command-line tool (`pip install kaggle`), with
    credentials in ~/.kaggle/kaggle.json or KAGGLE_USERNAME / KAGGLE_KEY."""
    has_credentials = (Path.home() / ".kaggle" / "kaggle.json").exists() or \
        ("KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ)
    if shutil.which("kaggle") is None:
        raise ConfigError("the kaggle command is not installed: `.venv/bin/pip install kaggle`, then put your API "
                          "token in ~/.kaggle/kaggle.json (see docs/EXPERIMENT_GUIDE.md)")
    if not has_credentials:
        raise ConfigError("no Kaggle credentials: save your API token as ~/.kaggle/kaggle.json (chmod 600) "
                          "or set KAGGLE_USERNAME and KAGGLE_KEY; accept the competition's rules on its page first")
    Path(dst).mkdir(parents=True, exist_ok=True)
    subprocess.run(["kaggle", "competitions", "download", "-c", KAGGLE_COMPETITION, "-p", str(dst)], check=True)
