"""ImageNet preparation: the user's archives (or Kaggle's copy, or an extracted tree)
→ data/imagenet/{train,val}/<wnid>/*.JPEG, the ImageFolder layout the imagenet profile reads.

Resumable by construction: every unit of work (one training class, the validation
set) is written under a temporary name and renamed into place when complete, and a
rename is atomic. A re-run skips what has its final name and redoes the rest, so an
interruption at any point (Ctrl-C, SIGKILL) loses at most the unit in progress. The
pool's workers die with the preparation (PR_SET_PDEATHSIG): killed, it leaves nothing.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from labkit.config import ConfigError
from labkit.jobs.processes import die_with_parent

TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
KAGGLE_ROOT = Path("ILSVRC") / "Data" / "CLS-LOC"


def detect(src: Path) -> str:
    """Which input this is: official archives, Kaggle's layout (zipped or not), or a tree."""
    if not src.is_dir():
        raise ConfigError(f"--src {src} is not a folder")
    if (src / TRAIN_TAR).exists() or (src / VAL_TAR).exists():
        for name in (TRAIN_TAR, VAL_TAR, DEVKIT):
            if not (src / name).exists():
                raise ConfigError(f"{src / name} is missing: the official input needs {TRAIN_TAR}, {VAL_TAR} and {DEVKIT}")
        return "official"
    if (src / KAGGLE_ROOT).is_dir() and (src / "LOC_val_solution.csv").exists():
        return "kaggle"
    if list(src.glob("*.zip")):
        return "kaggle-zip"
    if (src / "train").is_dir() and (src / "val").is_dir():
        return "tree"
    raise ConfigError(f"{src} holds neither the official archives ({TRAIN_TAR}, {VAL_TAR}, {DEVKIT}), "
                      f"Kaggle's ILSVRC/Data/CLS-LOC with LOC_val_solution.csv, nor train/ and val/ folders")


def one_line(error: Exception) -> str:
    return str(error).splitlines()[-1].strip(" -") or type(error).__name__


# -- the official archives --------------------------------------------------------------

def devkit_labels(devkit: Path, workdir: Path) -> list[str]:
    """The wnid of each validation image, in file-name order. The devkit's class ids are
    not in sorted-wnid order: map them through meta.mat's leaf synsets (num_children == 0),
    as torchvision's ImageNet dataset does."""
    import scipy.io

    try:
        with tarfile.open(devkit) as archive:
            archive.extractall(workdir, filter="data")
    except tarfile.TarError as error:
        raise ConfigError(f"{devkit} is not a readable tar.gz ({one_line(error)}); download it again") from None
    root = next(workdir.rglob("meta.mat"), None)
    truth = next(workdir.rglob("ILSVRC2012_validation_ground_truth.txt"), None)
    if root is None or truth is None:
        raise ConfigError(f"{devkit} lacks data/meta.mat or data/ILSVRC2012_validation_ground_truth.txt")
    synsets = scipy.io.loadmat(root, squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    return [id_to_wnid[int(line)] for line in truth.read_text().split()]


def extract_class(outer: str, member_name: str, offset: int, size: int, dst: str) -> str:
    """One training class: the inner tar at `offset` of the outer tar → dst/<wnid>."""
    wnid = member_name.split("/")[-1].removesuffix(".tar")
    final, tmp = Path(dst) / wnid, Path(dst) / f".{wnid}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written class from an interrupted run
    tmp.mkdir(parents=True)
    with open(outer, "rb") as handle:
        handle.seek(offset)
        with tarfile.open(fileobj=_Window(handle, size)) as inner:
            inner.extractall(tmp, filter="data")
    os.replace(tmp, final)  # the class is done only once it has its final name
    return wnid


class _Window:
    """A read-only file view of `size` bytes from the current position of `handle`."""

    def __init__(self, handle, size):
        self.handle, self.start, self.size = handle, handle.tell(), size

    def read(self, n=-1):
        left = self.start + self.size - self.handle.tell()
        return self.handle.read(left if n < 0 else min(n, left))

    def seek(self, offset, whence=0):
        base = {0: self.start, 1: self.handle.tell(), 2: self.start + self.size}[whence]
        return self.handle.seek(base + offset) - self.start

    def tell(self):
        return self.handle.tell() - self.start


def prepare_official(src: Path, dst: Path, workers: int) -> None:
    work = dst / ".val.partial"
    if not (dst / "val").is_dir():  # read the labels first: a bad devkit should stop us before hours of work
        shutil.rmtree(work, ignore_errors=True)
        wnids = devkit_labels(src / DEVKIT, work / "devkit")
    train = dst / "train"
    train.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(src / TRAIN_TAR) as outer:
            members = [m for m in outer.getmembers() if m.name.endswith(".tar")]
    except tarfile.TarError as error:
        raise ConfigError(f"{src / TRAIN_TAR} is not a readable tar ({one_line(error)}); download it again") from None
    todo = [m for m in members if not (train / m.name.split("/")[-1].removesuffix(".tar")).is_dir()]
    # Without die_with_parent a SIGKILLed preparation leaves each worker waiting forever for
    # work. "fork" makes the workers our own children (a forkserver would be their parent).
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool, \
            tqdm(total=len(members), initial=len(members) - len(todo), desc="train classes", unit="class") as bar:
        futures = [pool.submit(extract_class, str(src / TRAIN_TAR), m.name, m.offset_data, m.size, str(train))
                   for m in todo]
        for future in as_completed(futures):
            future.result()
            bar.update()
    if not (dst / "val").is_dir():
        with tarfile.open(src / VAL_TAR) as archive:
            images = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
            if len(images) != len(wnids):
                raise ConfigError(f"{VAL_TAR} has {len(images)} images but the devkit labels {len(wnids)}")
            for member, wnid in tqdm(list(zip(images, wnids)), desc="val images", unit="img"):
                folder = work / "val" / wnid
                folder.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as data, open(folder / Path(member.name).name, "wb") as out:
                    shutil.copyfileobj(data, out)
        os.replace(work / "val", dst / "val")
        shutil.rmtree(work)


# -- Kaggle's copy, and an already extracted tree ---------------------------------------

def kaggle_val_labels(csv_path: Path) -> dict[str, str]:
    """ImageId → wnid: the first token of each row's PredictionString is the class."""
    with open(csv_path, newline="") as handle:
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(handle)}


def link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    else:
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())


def prepare_kaggle(src: Path, dst: Path, copy: bool) -> None:
    root = src / KAGGLE_ROOT
    train = dst / "train"
    train.mkdir(parents=True, exist_ok=True)
    classes = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    for folder in tqdm(classes, desc="train classes", unit="class"):
        final, tmp = train / folder.name, train / f".{folder.name}.partial"
        if final.exists():
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink(missing_ok=True)
        link_or_copy(folder, tmp, copy)
        os.replace(tmp, final)
    if not (dst / "val").is_dir():
        labels = kaggle_val_labels(src / "LOC_val_solution.csv")
        work = dst / ".val.partial"
        shutil.rmtree(work, ignore_errors=True)
        for image_id, wnid in tqdm(sorted(labels.items()), desc="val images", unit="img"):
            (work / wnid).mkdir(parents=True, exist_ok=True)
            link_or_copy(root / "val" / f"{image_id}.JPEG", work / wnid / f"{image_id}.JPEG", copy)
        os.replace(work, dst / "val")


def prepare_tree(src: Path, dst: Path, copy: bool) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if not (dst / split).exists():
            tmp = dst / f".{split}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            link_or_copy(src / split, tmp, copy)
            os.replace(tmp, dst / split)


def unzip_kaggle(src: Path, dst: Path) -> Path:
    """Kaggle's zip → an extracted copy next to the destination (resumable: done once renamed)."""
    archive = sorted(src.glob("*.zip"))[0]
    final = dst.parent / f".{dst.name}.kaggle"
    if not final.is_dir():
        tmp = dst.parent / f".{dst.name}.kaggle.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in tqdm(zipped.infolist(), desc="unzip", unit="file"):
                    zipped.extract(member, tmp)
        except zipfile.BadZipFile as error:
            raise ConfigError(f"{archive} is not a readable zip ({one_line(error)}); download it again") from None
        os.replace(tmp, final)
    return final


def prepare(src, dst, workers: int = 4, copy: bool = False) -> str:
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    kind = detect(src)
    try:
        dst.mkdir(parents=True, exist_ok=True)
        (dst / ".write-test").touch()
        (dst / ".write-test").unlink()
    except OSError as error:
        raise ConfigError(f"--dst {dst} is not writable ({error.strerror}); choose a folder you can write to") from None
    if kind == "official":
        if not (dst / "train").exists():  # extracted images take about the archives' size
            need = (src / TRAIN_TAR).stat().st_size + (src / VAL_TAR).stat().st_size
            free = shutil.disk_usage(dst).free
            if free < need:
                raise ConfigError(f"{dst} has {free / 1e9:.1f} GB free but the extracted set needs "
                                  f"about {need / 1e9:.1f} GB; free some space or choose another --dst")
        prepare_official(src, dst, workers)
    elif kind == "kaggle":
        prepare_kaggle(src, dst, copy)
    elif kind == "kaggle-zip":
        prepare_kaggle(unzip_kaggle(src, dst), dst, copy=True)
    else:
        prepare_tree(src, dst, copy)
    return kind
