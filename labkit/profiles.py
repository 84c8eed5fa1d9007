"""Profiles (named sets of defaults) and the checks a config passes before launch.

`make_config("cpu", strategy="ps")` = RunConfig defaults ← the profile ← your
overrides, then resolved (auto backend/device/paths) and validated. A bad value
stops here, with one line naming it and the fix, before any process or folder is made.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from labkit import hardware
from labkit.config import AMP_MODES, DATASETS, MODELS, ConfigError, RunConfig, field_types, results_root
from labkit.datasets.tiny import check_image_folder, data_root, make_tiny

IMAGENET = dict(model="resnet50", dataset="imagenet", image_size=224, num_classes=1000, nproc=4,
                backend="nccl", device="cuda", workers=16, epochs=3, batch_size=64, lr=0.0,
                momentum=0.9, weight_decay=1e-4)
PROFILES = {
    "imagenet": IMAGENET,  # the original experiment
    "synthetic": dict(IMAGENET, dataset="synthetic", workers=0, epochs=1, synthetic_steps=50),
    "cpu": dict(model="resnet18_small", dataset="tiny", image_size=32, num_classes=10, nproc=4,
                backend="gloo", device="cpu", workers=0, epochs=3, batch_size=16, lr=0.02,
                pg_timeout_s=60.0, watchdog_s=120.0, calibration_steps=3),
}
COMPRESSIONS = ("none", "fp16", "bf16")


def make_config(profile: str = "auto", **overrides) -> RunConfig:
    from labkit.strategies import STRATEGIES

    unknown = set(overrides) - set(field_types())
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(field_types()))}")
    if profile == "auto":
        profile, _ = hardware.auto_profile()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of auto, {', '.join(PROFILES)}")
    values = dict(PROFILES[profile], profile=profile)
    if profile != "cpu" and "nproc" not in overrides and hardware.gpu_count():
        values["nproc"] = hardware.gpu_count()  # one rank per GPU
    values.update(overrides)
    strategy = values.get("strategy", RunConfig.strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if strategy == "single" and "nproc" not in overrides:
        values["nproc"] = 1
    cfg = RunConfig(**values)
    resolve(cfg)
    validate(cfg)
    return cfg


def resolve(cfg: RunConfig) -> None:
    """Turn 'auto' and empty defaults into concrete values, written into config.json."""
    if cfg.backend == "auto":
        cfg.backend = "nccl" if hardware.gpu_count() and cfg.device != "cpu" else "gloo"
    if cfg.device == "auto":
        cfg.device = "cuda" if cfg.backend == "nccl" or hardware.gpu_count() else "cpu"
    if not cfg.name:
        cfg.name = f"{cfg.strategy}-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not cfg.out_dir:
        cfg.out_dir = str(results_root() / "runs" / cfg.name)
    cfg.out_dir = str(Path(cfg.out_dir).expanduser().resolve())
    if cfg.dataset != "synthetic":
        cfg.data_dir = str(data_root(cfg))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    require(cfg.model in MODELS, f"unknown model '{cfg.model}'; choose one of {', '.join(MODELS)}")
    require(cfg.dataset in DATASETS, f"unknown dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}")
    require(cfg.amp in AMP_MODES, f"amp='{cfg.amp}' is not one of {', '.join(AMP_MODES)}")
    require(cfg.compress in COMPRESSIONS, f"compress='{cfg.compress}' is not one of {', '.join(COMPRESSIONS)}")
    require(cfg.ddp_hook in COMPRESSIONS, f"ddp_hook='{cfg.ddp_hook}' is not one of {', '.join(COMPRESSIONS)}")
    require(cfg.backend in ("gloo", "nccl"), f"backend '{cfg.backend}' is not gloo, nccl or auto")
    require(cfg.device in ("cpu", "cuda"), f"device '{cfg.device}' is not cpu, cuda or auto")
    require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name) is not None,
            f"run name '{cfg.name}' may hold only letters, digits, '.', '_' and '-'")
    require(cfg.nproc >= 1, f"nproc must be at least 1 (got {cfg.nproc})")
    require(cfg.strategy != "single" or cfg.nproc == 1, "strategy 'single' runs one process: use --nproc 1")
    require(cfg.strategy != "ps" or cfg.nproc >= 2, "strategy 'ps' needs a server and a worker: use --nproc 2 or more")
    require(cfg.strategy != "ps" or cfg.amp != "fp16", "ps does not support amp=fp16 (the loss scale lives on the "
            "server); use --set amp=bf16")
    require(cfg.powersgd_start_iter >= 2 and cfg.powersgd_rank >= 1,
            f"powersgd_start_iter must be at least 2 (DDP's first two steps run uncompressed) and "
            f"powersgd_rank at least 1 (got {cfg.powersgd_start_iter}, {cfg.powersgd_rank})")
    for key in ("epochs", "batch_size", "image_size", "num_classes"):
        require(getattr(cfg, key) >= 1, f"{key} must be at least 1 (got {getattr(cfg, key)})")
    require(cfg.max_steps >= 0 and cfg.workers >= 0, "max_steps and workers cannot be negative")
    require(cfg.fault == "" or re.fullmatch(r"\d+:\d+:(raise|exit|kill|hang)", cfg.fault) is not None,
            f"fault='{cfg.fault}': expected RANK:STEP:KIND with KIND raise, exit, kill or hang (e.g. 2:5:raise)")
    check_devices(cfg)
    check_data(cfg)
    require(not finished_ok(Path(cfg.out_dir)),
            f"{cfg.out_dir} already holds a finished run; choose another --name or --out")


def finished_ok(folder: Path) -> bool:
    import json

    result = folder / "result.json"
    return result.exists() and json.loads(result.read_text()).get("status") == "ok"


def check_devices(cfg: RunConfig) -> None:
    gpus = hardware.gpu_count()
    if cfg.device == "cuda":
        require(gpus > 0, "device=cuda but no GPU is visible; use --profile cpu (or --set device=cpu backend=gloo)")
    if cfg.backend == "nccl":
        require(cfg.device == "cuda", "backend nccl needs device=cuda; use --set backend=gloo on CPU")
        require(cfg.nproc <= gpus, f"NCCL cannot place two ranks on one GPU: nproc={cfg.nproc} but {gpus} GPU(s) "
                f"visible; use --nproc {gpus} or --set backend=gloo")


def check_data(cfg: RunConfig) -> None:
    if cfg.dataset == "synthetic":
        return
    root = Path(cfg.data_dir)
    if cfg.dataset == "tiny":
        make_tiny(root, seed=0)  # generated on first need
    classes = check_image_folder(root / "train")
    check_image_folder(root / "val")
    require(classes == cfg.num_classes, f"{root / 'train'} has {classes} classes but num_classes={cfg.num_classes}; "
            f"use --set num_classes={classes}")
    ranks = cfg.data_ranks
    needed = cfg.batch_size * ranks
    found = count_images(root / "train", stop_at=needed)
    require(found >= needed, f"batch_size={cfg.batch_size} per rank × {ranks} ranks needs {needed} training images "
            f"but {root / 'train'} has {found}; lower --set batch_size or --nproc")


def count_images(folder: Path, stop_at: int) -> int:
    """Count image files, stopping early once `stop_at` are found (ImageNet is large)."""
    from torchvision.datasets.folder import is_image_file

    found = 0
    for _, _, files in os.walk(folder):
        found += sum(1 for name in files if is_image_file(name))
        if found >= stop_at:
            break
    return found


def resume_config(run_dir) -> RunConfig:
    """The saved config of an earlier run, set to continue from its checkpoint."""
    folder = Path(run_dir)
    if not (folder / "config.json").exists() or not (folder / "checkpoint.pt").exists():
        raise ConfigError(f"{folder} holds no config.json and checkpoint.pt to resume from")
    cfg = RunConfig.load(folder / "config.json")
    cfg.resume, cfg.out_dir = True, str(folder.resolve())
    check_devices(cfg)
    return cfg
