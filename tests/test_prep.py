"""ImageNet preparation from archives in the real formats (built here, small)."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, labkit_cli
from imagenet_fixtures import WNIDS, make_kaggle, make_official
from labkit.config import ConfigError
from labkit.datasets.prep import prepare
from labkit.datasets.verify import subset, verify


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_layout(dst: Path, truth: dict, classes: int, per_class: int):
    assert sorted(p.name for p in (dst / "train").iterdir()) == WNIDS[:classes]
    assert all(len(list((dst / "train" / w).iterdir())) == per_class for w in WNIDS[:classes])
    for name, wnid in truth.items():  # every validation image in its true class
        assert (dst / "val" / wnid / name).is_file(), (name, wnid)
    report = verify(dst, decode=True, workers=1)
    assert report["problems"] == [] and report["splits"]["val"]["images"] == len(truth)


def test_official_archives(tmp_path):
    truth = make_official(tmp_path / "src")
    assert prepare(tmp_path / "src", tmp_path / "imagenet", workers=2) == "official"
    check_layout(tmp_path / "imagenet", truth, 4, 3)


@pytest.mark.parametrize("zipped", [False, True], ids=["extracted", "zipped"])
def test_kaggle_layout(tmp_path, zipped):
    truth = make_kaggle(tmp_path / "src", zipped=zipped)
    prepare(tmp_path / "src", tmp_path / "imagenet")
    check_layout(tmp_path / "imagenet", truth, 4, 3)


def test_extracted_tree_is_linked(tmp_path):
    make_kaggle(tmp_path / "kaggle")
    prepare(tmp_path / "kaggle", tmp_path / "tree")
    assert prepare(tmp_path / "tree", tmp_path / "imagenet") == "tree"
    assert (tmp_path / "imagenet" / "train").is_symlink() and verify(tmp_path / "imagenet")["problems"] == []


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path):
    make_official(tmp_path / "src", classes=12, per_class=40)
    prepare(tmp_path / "src", tmp_path / "straight", workers=1)
    command = [sys.executable, "-m", "labkit.cli", "data", "prepare-imagenet", "--src", str(tmp_path / "src"),
               "--dst", str(tmp_path / "resumed"), "--workers", "1"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train = tmp_path / "resumed" / "train"
    deadline = time.time() + 60
    while time.time() < deadline and not (train.is_dir() and [p for p in train.iterdir() if p.name.startswith("n")]):
        time.sleep(0.01)
    pool = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p.name for p in train.iterdir() if p.name.startswith("n")]
    assert 0 < len(finished) < 12, "the kill should land mid-way"
    # Nothing left behind: the pool's worker died with it (children noted before the kill,
    # and anything else whose command line names this test's folder).
    assert len(pool) == 1, "the pool's one worker should have been running"
    _, alive = psutil.wait_procs(pool, timeout=15)
    assert not alive, f"left running: {[(p.pid, p.cmdline()[:6]) for p in alive]}"
    strays = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not strays, f"left running: {[(p.pid, p.info['cmdline'][:6]) for p in strays]}"
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert tree_digest(tmp_path / "resumed") == tree_digest(tmp_path / "straight")


def test_training_reads_the_prepared_set_cmyk_and_png_included(tmp_path):
    make_official(tmp_path / "src", classes=4, per_class=8, val_per_class=2)
    prepare(tmp_path / "src", tmp_path / "imagenet")
    labkit_cli("run", "--strategy", "ddp", "--profile", "cpu", "--nproc", 2, "--max-steps", 2, "--out", tmp_path / "run",
               "--set", "dataset=imagefolder", "--set", f"data_dir={tmp_path / 'imagenet'}", "--set", "num_classes=4",
               "--set", "batch_size=4", "--set", "model=simple_cnn", "--set", "workers=0")


def test_verify_reports_what_imagefolder_would_get_wrong(tmp_path):
    make_kaggle(tmp_path / "src")
    prepare(tmp_path / "src", tmp_path / "imagenet", copy=True)
    root = tmp_path / "imagenet"
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / WNIDS[5]).mkdir()
    (root / "val" / "stray.JPEG").write_bytes(b"")
    (root / "train" / WNIDS[1] / "broken.JPEG").write_bytes(b"not an image")
    problems = "\n".join(verify(root, decode=True, workers=1)["problems"])
    assert ".ipynb_checkpoints/ is a hidden folder" in problems and f"train/{WNIDS[5]}/ has no image" in problems
    assert "outside any class folder" in problems and "unreadable:" in problems and "broken.JPEG" in problems
    assert "CMYK" not in problems and f"{WNIDS[0]}_1.JPEG" not in problems  # PNG-in-JPEG and CMYK decode fine


def test_subset_is_deterministic_links(tmp_path):
    make_kaggle(tmp_path / "src", classes=6, per_class=5, val_per_class=3)
    prepare(tmp_path / "src", tmp_path / "imagenet")
    a = subset(tmp_path / "imagenet", tmp_path / "a", classes=3, train_per_class=2, val_per_class=1, seed=7)
    b = subset(tmp_path / "imagenet", tmp_path / "b", classes=3, train_per_class=2, val_per_class=1, seed=7)
    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*.JPEG"))
    assert listing(a) == listing(b) and len(listing(a)) == 3 * 2 + 3 * 1
    assert all(p.is_symlink() for p in a.rglob("*.JPEG"))


@pytest.mark.parametrize("case,message", [
    ("missing", "ILSVRC2012_img_val.tar is missing"),
    ("corrupt", "is not a readable tar"),
    ("no-meta", "lacks data/meta.mat"),
    ("unwritable", "is not writable"),
])
def test_bad_inputs_give_one_clear_line(tmp_path, case, message):
    make_official(tmp_path / "src", meta_mat=case != "no-meta")
    dst = tmp_path / "imagenet"
    if case == "missing":
        (tmp_path / "src" / "ILSVRC2012_img_val.tar").unlink()
    if case == "corrupt":
        (tmp_path / "src" / "ILSVRC2012_img_train.tar").write_bytes(b"\x00garbage" * 1000)
    if case == "unwritable":
        (tmp_path / "file").write_text("")
        dst = tmp_path / "file" / "imagenet"  # a path through a file: no one can create it
    proc = labkit_cli("data", "prepare-imagenet", "--src", tmp_path / "src", "--dst", dst, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_download_kaggle_explains_what_is_missing(tmp_path, monkeypatch):
    from labkit.datasets.verify import download_kaggle

    monkeypatch.setenv("PATH", str(tmp_path))  # no kaggle command here
    with pytest.raises(ConfigError, match="pip install kaggle"):
        download_kaggle(tmp_path / "dl")


def test_checking_a_config_makes_no_dataset_and_the_job_makes_the_tiny_set_on_first_need(tmp_path):
    import labkit
    from labkit.datasets.tiny import TINY_SHAPE, is_made
    from labkit.profiles import make_config

    data = tmp_path / "tiny"
    cfg = make_config("cpu", strategy="single", data_dir=str(data), out_dir=str(tmp_path / "run"), max_steps=1,
                      calibration_steps=0, epochs=1)
    assert not data.exists()  # validated against the set's known shape, nothing written
    with pytest.raises(ConfigError, match=f"needs 1280 training images but .* has {TINY_SHAPE['train_images']}"):
        make_config("cpu", strategy="single", data_dir=str(data), batch_size=1280)
    assert not data.exists()
    result = labkit.run(cfg, progress=False)  # the job's start generates it, before its process reads it
    assert result["status"] == "ok" and is_made(data)
    assert sum(1 for _ in (data / "train").rglob("*.jpg")) == TINY_SHAPE["train_images"]
