"""Small ImageNet look-alikes in the real formats, built inside the tests."""

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# Leaf ids deliberately NOT in sorted-wnid order, and non-leaf synsets mixed in.
WNIDS = [f"n{9000000 + 7 * i:08d}" for i in range(12)]
LEAF_IDS = {wnid: 12 - i for i, wnid in enumerate(WNIDS)}  # n...0 has id 12, n...last id 1


def jpeg_bytes(seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    if mode == "CMYK":
        image = image.convert("CMYK")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def train_images(wnid: str, per_class: int):
    for k in range(per_class):
        special = {0: ("CMYK", "JPEG"), 1: ("RGB", "PNG")}.get(k, ("RGB", "JPEG")) if wnid == WNIDS[0] else ("RGB", "JPEG")
        yield f"{wnid}_{k}.JPEG", jpeg_bytes(hash((wnid, k)) % 2**32, *special)  # a PNG named .JPEG, a CMYK JPEG


def val_truth(classes: int, per_class: int) -> dict[str, str]:
    """file name → true wnid, interleaved so file order says nothing about the class."""
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(classes * per_class)]
    return {name: WNIDS[(i * 5) % classes] for i, name in enumerate(names)}


def make_official(folder: Path, classes: int = 4, per_class: int = 3, val_per_class: int = 2,
                  meta_mat: bool = True) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in WNIDS[:classes]:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for name, data in train_images(wnid, per_class):
                    add_bytes(inner, name, data)
            add_bytes(outer, f"{wnid}.tar", buffer.getvalue())
    truth = val_truth(classes, val_per_class)
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as archive:
        for i, name in enumerate(truth):
            add_bytes(archive, name, jpeg_bytes(10_000 + i))
    devkit = folder / "devkit"
    (devkit / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True, exist_ok=True)
    data = devkit / "ILSVRC2012_devkit_t12" / "data"
    if meta_mat:
        fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
                  ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
        rows = [(LEAF_IDS[w], w, f"thing {w}", "a thing", 0, np.array([]), 0, per_class) for w in WNIDS[:classes]]
        rows += [(100 + i, f"n{1000 + i:08d}", "group", "a group", 2, np.array([1, 2]), 1, 0) for i in range(2)]
        synsets = np.array(rows, dtype=fields)
        scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    ids = {w: LEAF_IDS[w] for w in WNIDS[:classes]}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in truth.values()))
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as archive:
        archive.add(devkit / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    return truth


def make_kaggle(folder: Path, classes: int = 4, per_class: int = 3, val_per_class: int = 2, zipped: bool = False):
    files = {}
    root = "ILSVRC/Data/CLS-LOC"
    for wnid in WNIDS[:classes]:
        for name, data in train_images(wnid, per_class):
            files[f"{root}/train/{wnid}/{name}"] = data
    truth = {name.replace(".JPEG", ""): wnid for name, wnid in val_truth(classes, val_per_class).items()}
    for i, image_id in enumerate(truth):
        files[f"{root}/val/{image_id}.JPEG"] = jpeg_bytes(20_000 + i)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["ImageId", "PredictionString"])
    for image_id, wnid in truth.items():
        writer.writerow([image_id, f"{wnid} 10 20 30 40 {wnid} 1 2 3 4"])
    files["LOC_val_solution.csv"] = rows.getvalue().encode()
    files["LOC_synset_mapping.txt"] = "".join(f"{w} thing {w}\n" for w in WNIDS[:classes]).encode()
    folder.mkdir(parents=True, exist_ok=True)
    if zipped:
        with zipfile.ZipFile(folder / "imagenet-object-localization-challenge.zip", "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    return {f"{k}.JPEG": v for k, v in truth.items()}
