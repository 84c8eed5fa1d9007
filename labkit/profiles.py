"""Profiles (named sets of defaults) and the checks a config passes before launch.

`make_config("cpu", strategy="ps")` = RunConfig defaults ← the profile ← your
overrides, then resolved (auto backend/device/paths) and validated. A bad value
stops here, with one line naming it and the fix, before any process or folder is made.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from labkit.config import (AMP_MODES, DATASETS, DTYPES, MODELS, ConfigError, RunConfig, field_types, is_file_spec,
                           parse_rate, parse_straggler, results_root)
from labkit.datasets import tiny
from labkit.datasets.folders import check_image_folder, data_root, is_image_file
from labkit import run_folder as folder
from labkit.strategies import BASELINE, REGISTRY, check_import, load_strategy  # light: a method's file is read when chosen

IMAGENET = dict(model="resnet50", dataset="imagenet", image_size=224, num_classes=1000, nproc=4,
                backend="nccl", device="cuda", workers=16, epochs=3, batch_size=64, lr=0.0,
                momentum=0.9, weight_decay=1e-4)
PROFILES = {
    "imagenet": IMAGENET,  # the original experiment
    "synthetic": dict(IMAGENET, dataset="synthetic", workers=0, epochs=1, synthetic_steps=50),
    "cpu": dict(model="resnet18_small", dataset="tiny", image_size=32, num_classes=10, nproc=4,
                backend="gloo", device="cpu", workers=0, epochs=3, batch_size=16, lr=0.02,
                pg_timeout_s=60.0, watchdog_s=120.0, calibration_steps=1,  # x 3 rounds, + 1 warm-up
                # the recipe: one global batch of 64 for every method (single included), and lr 0.02
                # reached by a linear warm-up; without it BatchNorm amplifies float32 rounding and the
                # exact methods end ~7e-3 (relative) from DDP in 6 steps; with it, within 1e-3
                global_batch_size=64, lr_warmup_steps=20),
}


def make_config(profile: str = "auto", **overrides) -> RunConfig:
    if "nnodes" in overrides:  # torchrun's word for it, as on the command line
        overrides["nodes"] = overrides.pop("nnodes")
    strategy = overrides["strategy"] = overrides.get("strategy") or BASELINE
    if is_file_spec(strategy):  # the workers start elsewhere: give them the whole path
        strategy = overrides["strategy"] = f"{Path(strategy.rsplit(':', 1)[0]).expanduser().resolve()}:" \
                                          f"{strategy.rsplit(':', 1)[1]}"
    precheck(profile, overrides)  # what needs no torch, first: a refusal in a fraction of a second
    check_import(strategy)  # a file of the user's: imported first in a child, under a watchdog
    method = load_strategy(strategy)
    # Keys the lab knows are config fields; the rest must be options the method declares,
    # and a method may not declare a name the lab already uses (`--set` could not tell them apart).
    option_names = {option.name for option in method.about.options}
    clash = sorted(option_names & set(field_types()))
    if clash:
        raise ConfigError(f"{strategy}: {method.__name__} declares option(s) {clash} that the lab already uses; "
                          f"rename them (e.g. {clash[0]}_{method.__name__.lower()})")
    unknown = set(overrides) - set(field_types()) - option_names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)}; the lab's keys: {', '.join(sorted(field_types()))}; "
                          f"options of '{strategy}': {', '.join(sorted(option_names)) or 'none'}")
    given = {**overrides.pop("options", {}), **{k: overrides.pop(k) for k in list(overrides) if k in option_names}}
    options = method.about.option_values(given)
    if profile == "auto":
        profile, _ = hardware().auto_profile()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of auto, {', '.join(PROFILES)}")
    values = dict(PROFILES[profile], profile=profile)
    if profile != "cpu" and "nproc" not in overrides and hardware().gpu_count():
        values["nproc"] = hardware().gpu_count()  # one rank per GPU
    values.update(method.about.defaults)  # what the method prefers (single: one process)...
    values.update(overrides)        # ...unless the user said otherwise
    cfg = RunConfig(**values, options=options)
    about = method.about.of(cfg)  # what the method says it is, for this config
    cfg.data_ranks, cfg.torchrun = cfg.nproc - about.servers, not about.plain_process
    if cfg.global_batch_size and "batch_size" not in overrides:  # the recipe's global batch, whatever
        # the rank count (single: all) and the micro-batches of a step (accumulate)
        cfg.batch_size = max(1, cfg.global_batch_size // max(1, cfg.data_ranks * cfg.accumulate))
    resolve(cfg)
    validate(cfg)
    about = method.about.of(cfg)  # again: its refusals read the final config
    if about.refusal:
        raise ConfigError(about.refusal)
    if cfg.sync_bn and (why := sync_bn_refusal(about, cfg)):
        raise ConfigError(f"sync_bn=true does not apply to {cfg.strategy_name}: {why}; leave sync_bn off")
    check_precision(cfg, about)
    return cfg


def hardware():
    """labkit.hardware, imported when first needed: it imports torch (seconds), and a refusal
    of a bad setting should not wait for that."""
    from labkit import hardware as module

    return module


def cheap_profile(profile: str) -> str | None:
    """The profile, where it is known without torch: named, or `auto` on a machine with no
    NVIDIA device at all (no driver, no nvidia-smi: torch could not see a GPU either, and
    labkit.hardware has nothing to refuse). None: ask torch."""
    if profile != "auto":
        return profile
    import shutil
    import sys

    nvidia = Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")
    if sys.platform == "darwin" or not nvidia:
        return "cpu"
    return None


def precheck(profile: str, overrides: dict) -> RunConfig | None:
    """Everything about a run that can be decided without torch (the method's file imports it):
    the method's name, the profile, every value given, nodes, the run folder. make_config checks
    them all again on the whole config, and the job once more as it claims the folder; this only
    makes a refusal fast. Returns the run as known so far (None: the profile needs torch)."""
    strategy = overrides["strategy"]
    if not is_file_spec(strategy) and strategy not in REGISTRY:
        load_strategy(strategy)  # its one-line refusal, without importing anything
    if is_file_spec(strategy) and not Path(strategy.rsplit(":", 1)[0]).is_file():
        load_strategy(strategy)
    name = cheap_profile(profile)
    if name is None:
        return None
    if name not in PROFILES:
        raise ConfigError(f"unknown profile '{name}'; choose one of auto, {', '.join(PROFILES)}")
    fields = {k: v for k, v in overrides.items() if k in field_types() and k != "options"}
    draft = RunConfig(**{**PROFILES[name], "profile": name, **fields})
    check_nodes(draft)  # (before a name is made up: real nodes must be given one)
    if not draft.name:  # the name resolve() would give, fixed now so both agree (a clock's second may pass)
        draft.name = overrides["name"] = f"{draft.strategy_name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_values(draft, nproc_known="nproc" in overrides)  # a method may choose its own (single: 1)
    folder.check_new(Path(draft.out_dir or results_root() / "runs" / draft.name).expanduser(), **folder.run_of(draft))
    return draft


def check_values(cfg: RunConfig, nproc_known: bool = True) -> None:
    """Each value within its range: one line naming the key, the value and what it takes."""
    require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name) is not None,
            f"run name '{cfg.name}' may hold only letters, digits, '.', '_' and '-'")
    for key, kind in field_types().items():
        value = getattr(cfg, key)
        if kind is float:
            require(math.isfinite(value), f"{key}={value}: give a finite number")
    require(cfg.lr >= 0, f"lr={cfg.lr}: give a learning rate > 0 (or 0 for the linear scaling rule, 0.1 × global batch / 256)")
    require(cfg.optimizer in ("sgd", "adamw"), f"optimizer='{cfg.optimizer}' is not one of sgd, adamw")
    require(cfg.param_dtype in ("fp32", "bf16", "fp16"), f"param_dtype='{cfg.param_dtype}' is not one of fp32, bf16, fp16")
    require(cfg.reduce_dtype in ("", "fp32", "bf16", "fp16"),
            f"reduce_dtype='{cfg.reduce_dtype}' is not one of fp32, bf16, fp16 (or empty: the param_dtype)")
    require(cfg.momentum >= 0 and cfg.weight_decay >= 0,
            f"momentum={cfg.momentum}, weight_decay={cfg.weight_decay}: neither can be negative")
    require(cfg.pg_timeout_s > 0, f"pg_timeout_s={cfg.pg_timeout_s}: a collective's timeout must be > 0 seconds")
    require(cfg.watchdog_s > 0, f"watchdog_s={cfg.watchdog_s}: the watchdog's wait must be > 0 seconds "
            f"(a larger one waits longer before a run without progress is stopped as hung)")
    require(cfg.nproc >= 1, f"nproc must be at least 1 (got {cfg.nproc})")
    for key in ("epochs", "batch_size", "image_size", "num_classes", "accumulate"):
        require(getattr(cfg, key) >= 1, f"{key} must be at least 1 (got {getattr(cfg, key)})")
    for key in ("max_steps", "workers", "timing_warmup_steps", "calibration_steps", "timeline_steps", "checkpoint_every",
                "max_restarts", "lr_warmup_steps", "global_batch_size", "synthetic_steps"):
        require(getattr(cfg, key) >= 0, f"{key}={getattr(cfg, key)} cannot be negative")
    require(cfg.fault == "" or re.fullmatch(r"\d+:\d+:(raise|exit|kill|hang|skip)", cfg.fault) is not None,
            f"fault='{cfg.fault}': expected RANK:STEP:KIND with KIND raise, exit, kill, hang or skip (e.g. 2:5:raise)")
    if cfg.fault:
        rank, step, _ = cfg.fault.split(":")
        require(int(step) >= 1, f"fault='{cfg.fault}': steps count from 1")
        require(not nproc_known or int(rank) < cfg.nproc, f"fault='{cfg.fault}': there is no rank {rank} in a run of "
                f"{cfg.nproc} rank(s) (0 … {cfg.nproc - 1}); the fault would never fire")
    if nproc_known:
        parse_straggler(cfg.straggler, cfg.nproc)  # a one-line ConfigError for text it cannot read


def resolve(cfg: RunConfig) -> None:
    """Turn 'auto' and empty defaults into concrete values, written into config.json."""
    if cfg.backend == "auto":
        cfg.backend = "nccl" if hardware().gpu_count() and cfg.device != "cpu" else "gloo"
    if cfg.device == "auto":
        cfg.device = "cuda" if cfg.backend == "nccl" or hardware().gpu_count() else "cpu"
    if not cfg.name:
        cfg.name = f"{cfg.strategy_name}-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
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
    require(cfg.backend in ("gloo", "nccl"), f"backend '{cfg.backend}' is not gloo, nccl or auto")
    require(cfg.device in ("cpu", "cuda"), f"device '{cfg.device}' is not cpu, cuda or auto")
    require(cfg.dtype in DTYPES, f"dtype='{cfg.dtype}' is not one of {', '.join(DTYPES)}")
    require(cfg.dtype == "float32" or cfg.amp == "off", "amp mixes float16/bfloat16 into float32 runs; "
            "use --set amp=off with dtype=float64")
    check_values(cfg)
    check_nodes(cfg)
    check_devices(cfg)
    check_data(cfg)
    if not cfg.resume:  # (a resumed run's folder is checked by resume_config)
        folder.check_new(Path(cfg.out_dir), **folder.run_of(cfg))


def sync_bn_refusal(about, cfg: RunConfig) -> str:
    """Why `sync_bn=true` cannot run with this method ("" when it can). SyncBatchNorm makes a
    collective in every BatchNorm's forward and backward, so it needs every rank running the same
    model's forward in the same step, synchronizing every step."""
    if about.plain_process:
        return "it runs one process, with no other rank to normalize with"
    if about.servers:
        return "its server ranks run no forward, so the workers' BatchNorm collectives would wait for them forever"
    if about.sync_every > 1:
        return (f"its ranks train apart for {about.sync_every} steps between synchronizations, and "
                f"SyncBatchNorm would make them communicate in every BatchNorm of every step")
    return ""


def check_precision(cfg: RunConfig, about) -> None:
    """param_dtype / reduce_dtype: only a method that declares mixed_precision reads them (fsdp);
    any other would silently train in fp32 and count fp32 bytes."""
    lowered = [f"{key}={value}" for key, value in (("param_dtype", cfg.param_dtype), ("reduce_dtype", cfg.reduce_dtype))
               if value not in ("", "fp32")]
    if lowered and not about.mixed_precision:
        raise ConfigError(f"{', '.join(lowered)}: {cfg.strategy_name} does not take param_dtype or reduce_dtype (a "
                          f"method that gathers its parameters in a lower precision does: fsdp); use --strategy fsdp, "
                          f"or --set amp=bf16 for bf16 compute")


def check_nodes(cfg: RunConfig) -> None:
    """Several nodes: each runs nproc / nodes ranks; real ones name the rendezvous, emulated
    ones a link rate (labkit/jobs/cluster.py checks, before the job writes anything, that this
    machine can emulate them)."""
    require(cfg.nodes >= 1, f"nodes must be at least 1 (got {cfg.nodes})")
    require(not (cfg.nodes > 1 and cfg.rdzv_endpoint and not cfg.name) or cfg.resume,  # a clock's name could differ
            "real nodes need the same --name on every node: it names the run and its rendezvous")
    require(cfg.nproc % cfg.nodes == 0, f"{cfg.nodes} nodes do not divide {cfg.nproc} ranks; "
            f"use --nproc {cfg.nodes * max(1, cfg.nproc // cfg.nodes)} or another node count")
    require(0 <= cfg.node_rank < cfg.nodes, f"node rank {cfg.node_rank} is out of range for {cfg.nodes} node(s) "
            f"(0 … {cfg.nodes - 1})")
    if cfg.rdzv_endpoint:
        host, _, port = cfg.rdzv_endpoint.rpartition(":")
        require(bool(host) and port.isdigit() and 0 < int(port) < 65536,
                f"rendezvous endpoint '{cfg.rdzv_endpoint}' is not HOST:PORT (e.g. node0.cluster:29500)")
        require(not cfg.link, "link= shapes emulated nodes only; real nodes have the network they have")
    require(cfg.torchrun or cfg.nodes == 1, f"{cfg.strategy_name} runs one plain process: it takes no nodes")
    if cfg.link:
        parse_rate(cfg.link)  # a one-line ConfigError for a rate tc cannot read
        require(cfg.nodes > 1, f"link={cfg.link} shapes the links between emulated nodes: add --set nodes=N (N ≥ 2)")
    if cfg.emulated:
        require(cfg.backend == "gloo", "emulated nodes run gloo on the CPU: NCCL's traffic may not pass "
                "through the shaped links (use --profile cpu)")



def check_devices(cfg: RunConfig) -> None:
    gpus = hardware().gpu_count()
    if cfg.device == "cuda":
        require(gpus > 0, "device=cuda but no GPU is visible; use --profile cpu (or --set device=cpu backend=gloo)")
        # One rank per GPU, whatever the backend: a rank past the last GPU fails with
        # "invalid device ordinal", and NCCL cannot put two ranks on one GPU.
        require(cfg.ranks_per_node <= gpus, f"{cfg.ranks_per_node} ranks but {gpus} GPU(s) visible, and each rank needs a GPU of its own; "
                f"use --nproc {gpus}, or run on the CPU with --profile cpu")
        # Before Ampere a GPU has no bfloat16 units: autocast would emulate it, slowly and silently.
        if cfg.amp == "bf16" and not bf16_native():
            raise ConfigError(f"amp=bf16 but the GPU ({hardware().gpu_names()[0]}) has no native bfloat16 and would "
                              f"emulate it slowly; use --set amp=fp16 or --set amp=off")
    if cfg.backend == "nccl":
        require(cfg.device == "cuda", "backend nccl needs device=cuda; use --set backend=gloo on CPU")


def bf16_native() -> bool:
    """Whether the GPU computes in bfloat16 itself (compute capability 8.0+), not by emulation."""
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


def check_data(cfg: RunConfig) -> None:
    if cfg.dataset == "synthetic":
        return
    root = Path(cfg.data_dir)
    ranks = cfg.data_ranks
    needed = cfg.batch_size * ranks * cfg.accumulate  # one optimizer step's micro-batches
    if cfg.dataset == "tiny" and not tiny.is_made(root):  # generated when its job starts, not by a check:
        classes, found = tiny.TINY_SHAPE["classes"], tiny.TINY_SHAPE["train_images"]  # check its known shape
    else:
        classes = check_image_folder(root / "train")
        check_image_folder(root / "val")
        found = count_images(root / "train", stop_at=needed)
    require(classes == cfg.num_classes, f"{root / 'train'} has {classes} classes but num_classes={cfg.num_classes}; "
            f"use --set num_classes={classes}")
    micro = f" × accumulate={cfg.accumulate}" if cfg.accumulate > 1 else ""
    require(found >= needed, f"batch_size={cfg.batch_size} per rank × {ranks} ranks{micro} needs {needed} training images "
            f"but {root / 'train'} has {found}; lower --set batch_size{' or accumulate' if micro else ''} or --nproc")


def count_images(folder: Path, stop_at: int) -> int:
    """Count image files, stopping early once `stop_at` are found (ImageNet is large)."""
    found = 0
    for _, _, files in os.walk(folder):
        found += sum(1 for name in files if is_image_file(name))
        if found >= stop_at:
            break
    return found


def resume_config(run_dir, max_restarts: int | None = None) -> RunConfig:
    """The saved config of an earlier, unfinished run, set to continue from its checkpoint.
    Nothing else about the run changes (a resumed run is the same run); only the number of
    restarts torchrun may make from here, which is written into its config.json."""
    import zipfile

    path = Path(run_dir).expanduser()
    folder.check_resumable(path)
    try:
        cfg = RunConfig.load(path / "config.json")
    except (ValueError, TypeError) as error:  # JSON cut short or edited by hand
        raise ConfigError(f"{path / 'config.json'} is not a readable run config ({str(error).splitlines()[0]}); "
                          f"this run cannot be resumed — start it afresh in a new folder") from None
    if not zipfile.is_zipfile(path / "checkpoint.pt"):  # torch's format is a zip archive: no torch needed to tell
        raise ConfigError(f"{path / 'checkpoint.pt'} is corrupt or not a checkpoint; this run cannot be resumed — "
                          f"start it afresh in a new folder")
    cfg.resume, cfg.out_dir = True, str(path.resolve())
    if max_restarts is not None:
        require(max_restarts >= 0, f"--max-restarts {max_restarts} cannot be negative")
        cfg.max_restarts = max_restarts
    check_devices(cfg)
    return cfg
