"""What this machine has, and the choices that follow from it (`labkit machine`).

The `auto` profile is decided here: GPUs and ImageNet → imagenet; GPUs without
ImageNet → synthetic; no GPU → cpu. Everything is read, nothing is assumed.

"No GPU" is asked of two witnesses: torch (can it use one?) and the system (nvidia-smi,
or the kernel driver's /proc files: is one there?). When they disagree — typically a
torch build for a newer CUDA than the NVIDIA driver supports — `auto` stops and says
which torch build to install, rather than quietly training on the CPU of a GPU machine.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

# torch is imported inside the functions that ask it (seconds): a Job reads the cores from
# here before any of its processes has imported torch (labkit.jobs.job).
from labkit import system as this_system  # "system" is the NVIDIA GPUs below
from labkit.config import LAB_ROOT, ConfigError

NVIDIA_PROC = Path("/proc/driver/nvidia")  # the kernel driver's own view of its GPUs

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility
# tables: with minor-version compatibility any 12.x runs on 525.60.13, any 13.x on 580.65.06).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
# Which of PyTorch's wheel indexes (https://download.pytorch.org/whl/<name>) suits a driver, newest first.
WHEELS = [("580.65.06", "cu130"), ("525.60.13", "cu126"), ("450.80.02", "cu118")]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(gpu_count())]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def system_gpus() -> list[tuple[str, str]]:
    """(name, driver version) of every NVIDIA GPU the system has, whether torch can use it
    or not: from nvidia-smi when it is on PATH and answers, else from /proc/driver/nvidia."""
    if not this_system.is_linux():  # NVIDIA's CUDA drivers are Linux's (and Windows', which runs labkit in WSL2)
        return []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            rows = [line.rsplit(",", 1) for line in out.stdout.splitlines() if "," in line]
            if out.returncode == 0 and rows:
                return [(name.strip(), driver.strip()) for name, driver in rows]
        except (OSError, subprocess.SubprocessError):
            pass  # nvidia-smi itself broken (it fails when its library and the driver differ): ask /proc
    try:
        match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", (NVIDIA_PROC / "version").read_text())
        driver = match.group(1) if match else "unknown"
        infos = sorted((NVIDIA_PROC / "gpus").glob("*/information"))
        names = [re.search(r"Model:\s*(.+)", info.read_text()) for info in infos]
    except OSError:
        return []
    return [(name.group(1).strip() if name else "NVIDIA GPU", driver) for name in names]


def unusable_gpus() -> str | None:
    """One line when the system has NVIDIA GPUs that torch cannot use, naming the driver,
    the CUDA version the torch build needs and the build to install; None otherwise."""
    import torch

    if gpu_count():  # torch can use one: the same question as everywhere else
        return None
    gpus = system_gpus()
    if not gpus:
        return None
    driver = gpus[0][1]
    names = ", ".join(sorted({name for name, _ in gpus}))
    found = f"this machine has {len(gpus)} NVIDIA GPU(s) ({names}, driver {driver}) but torch {torch.__version__}"
    wheel = next((name for oldest, name in WHEELS if version_tuple(driver) >= version_tuple(oldest)), None)
    pins = f"torch=={torch.__version__.split('+')[0]} torchvision=={_torchvision_version()}"
    install = (f"install the torch build for your driver: .venv/bin/pip install --force-reinstall {pins} "
               f"--index-url https://download.pytorch.org/whl/{wheel}" if wheel else
               "update the NVIDIA driver (torch needs 450.80 or newer)")
    if torch.version.cuda is None:
        return f"{found} is a CPU-only build; {install}"
    needed = MIN_DRIVER.get(int(torch.version.cuda.split(".")[0]))
    if needed and version_tuple(driver) < version_tuple(needed):
        return (f"{found} is built for CUDA {torch.version.cuda}, which needs driver {needed} or newer; "
                f"{install}, or update the driver")
    return (f"{found} (CUDA {torch.version.cuda}) cannot use them (torch.cuda.is_available() is False); "
            f"check CUDA_VISIBLE_DEVICES and that /dev/nvidia* can be opened")


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__.split("+")[0]


def nccl_loaded() -> tuple[str, str] | None:
    """(version, path) of the NCCL library this process has loaded, asked of the library
    itself: torch.cuda.nccl.version() is only the version torch was compiled against,
    and the wheel's nvidia-nccl package (or LD_LIBRARY_PATH) may bring another."""
    if not this_system.is_linux():  # /proc/self/maps is Linux's; no NCCL elsewhere
        return None
    try:
        paths = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                        if "/libnccl" in line.split()[-1]})
        if not paths:
            return None
        code = ctypes.c_int()
        if ctypes.CDLL(paths[0]).ncclGetVersion(ctypes.byref(code)) != 0:
            return None
    except (OSError, AttributeError):  # not Linux, or not a real NCCL library
        return None
    # NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + ... before
    major, rest = divmod(code.value, 10000 if code.value >= 20900 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}", paths[0]


def nccl_compiled() -> str | None:
    import torch

    try:
        return ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception:  # a CPU-only build, or the library cannot be loaded
        return None


def nccl_version() -> str | None:
    """The NCCL a GPU run really uses (the loaded library; else what torch was built with)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_nccl_available() and gpu_count()):
        return None
    loaded = nccl_loaded()
    return loaded[0] if loaded else nccl_compiled()


def nccl_line() -> str:
    loaded, compiled = nccl_loaded(), nccl_compiled()
    built = f"torch built with {compiled}" if compiled else "torch built without NCCL"
    if loaded is None:
        return f"not loaded ({built})"
    return f"{loaded[0]} loaded from {loaded[1]} ({built})" + ("" if gpu_count() else "; unused without a GPU")


def imagenet_dir():
    return LAB_ROOT / "data" / "imagenet"


def has_imagenet() -> bool:
    root = imagenet_dir()
    return (root / "train").is_dir() and (root / "val").is_dir()


def auto_profile() -> tuple[str, str]:
    """The profile `auto` resolves to, and the reason in words. Raises ConfigError on a
    GPU machine whose GPUs torch cannot use: the cpu profile must then be asked for."""
    problem = unusable_gpus()
    if problem:
        raise ConfigError(f"{problem}; or run on the CPU with --profile cpu")
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
    import torch
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


def machine_lines() -> list[tuple[str, str]]:
    """The rows `labkit machine` prints."""
    import torch
    import torch.distributed as dist
    import torchvision

    gpus = gpu_count()
    try:
        profile, why = auto_profile()
        auto = f"{profile} — {why}"
    except ConfigError as error:
        auto = f"stops: {error}"
    system = system_gpus()
    free_gb = shutil.disk_usage(LAB_ROOT).free / 1e9
    tiny = LAB_ROOT / "data" / "tiny"
    from labkit.lockfile import floor, torch_problem

    return [
        ("system", this_system.unsupported() or f"{this_system.name()} {platform.machine()}"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", torch_problem() or f"{torch.__version__} (labkit supports torch{floor('torch')})"),
        ("torchvision", torchvision.__version__),
        ("cuda", f"{torch.version.cuda} available" if gpus else f"not available (build {torch.version.cuda or 'cpu'})"),
        ("nvidia driver", system[0][1] if system else "none found (nvidia-smi, /proc/driver/nvidia)"),
        ("gpus", f"{gpus}: " + ", ".join(gpu_names()) if gpus else
         f"0 usable by torch, {len(system)} on the system" if system else "0"),
        ("nccl", nccl_line()),
        ("gloo", "available" if dist.is_available() and dist.is_gloo_available() else "NOT available"),
        ("cpu cores", str(os.cpu_count())),
        ("free disk", f"{free_gb:.1f} GB at {LAB_ROOT}"),
        ("imagenet", "found at data/imagenet" if has_imagenet() else "absent (labkit data prepare-imagenet)"),
        ("tiny dataset", "generated" if (tiny / "train").is_dir() else "not yet generated (made on first need)"),
        ("auto profile", auto),
    ]
