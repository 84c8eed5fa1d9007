"""What this machine has, and the choices that follow from it (`labkit check`).

The `auto` profile is decided here: GPUs and ImageNet → imagenet; GPUs without
ImageNet → synthetic; no GPU → cpu. Everything is read, nothing is assumed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import torch
import torch.distributed as dist

from labkit.config import LAB_ROOT


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_names() -> list[str]:
    return [torch.cuda.get_device_name(i) for i in range(gpu_count())]


def nccl_version() -> str | None:
    if not (dist.is_available() and dist.is_nccl_available() and gpu_count()):
        return None
    try:
        return ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception:  # NCCL library present in the wheel but not loadable
        return None


def imagenet_dir():
    return LAB_ROOT / "data" / "imagenet"


def has_imagenet() -> bool:
    root = imagenet_dir()
    return (root / "train").is_dir() and (root / "val").is_dir()


def auto_profile() -> tuple[str, str]:
    """The profile `auto` resolves to, and the reason in words."""
    gpus = gpu_count()
    if gpus and has_imagenet():
        return "imagenet", f"{gpus} GPU(s) and ImageNet at data/imagenet"
    if gpus:
        return "synthetic", f"{gpus} GPU(s) but no ImageNet at data/imagenet (prepare it: labkit data prepare-imagenet)"
    return "cpu", "no GPU: the small CPU lab (gloo, 4 ranks, generated tiny dataset)"


def cpu_threads_per_rank(ranks_on_node: int) -> int:
    """Split the cores between ranks so 4 CPU ranks on 2 cores do not thrash."""
    return max(1, (os.cpu_count() or 1) // max(1, ranks_on_node))


def lab_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=LAB_ROOT,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Provenance stored in every result.json."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if gpu_count() else None,
        "nccl": nccl_version(),
        "gpus": gpu_names(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "lab_commit": lab_commit(),
    }


def check_lines() -> list[tuple[str, str]]:
    """The rows `labkit check` prints."""
    import torchvision

    gpus = gpu_count()
    profile, why = auto_profile()
    free_gb = shutil.disk_usage(LAB_ROOT).free / 1e9
    tiny = LAB_ROOT / "data" / "tiny"
    return [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("cuda", f"{torch.version.cuda} available" if gpus else f"not available (build {torch.version.cuda or 'cpu'})"),
        ("gpus", f"{gpus}: " + ", ".join(gpu_names()) if gpus else "0"),
        ("nccl", nccl_version() or "not available (needs a GPU)"),
        ("gloo", "available" if dist.is_available() and dist.is_gloo_available() else "NOT available"),
        ("cpu cores", str(os.cpu_count())),
        ("free disk", f"{free_gb:.1f} GB at {LAB_ROOT}"),
        ("imagenet", "found at data/imagenet" if has_imagenet() else "absent (labkit data prepare-imagenet)"),
        ("tiny dataset", "generated" if (tiny / "train").is_dir() else "not yet generated (made on first need)"),
        ("auto profile", f"{profile} — {why}"),
    ]
