"""GPUs the system has but torch cannot use: `labkit machine` names the driver, the CUDA version
the torch build needs and the build to install; `auto` stops instead of quietly running on
the CPU. The system's side is a stand-in nvidia-smi (or /proc files) written by the test;
the detection, the message, the refusal and the cpu profile are the real code."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from labkit import hardware
from labkit.config import ConfigError
from labkit.profiles import make_config

RTX = "NVIDIA GeForce RTX 4090"
OLD_DRIVER = "535.104.05"  # CUDA 12 at most: the cu130 wheel cannot use it


def fake_nvidia_smi(folder, driver=OLD_DRIVER, gpus=4, fails=False):
    """An `nvidia-smi` that answers --query-gpu=name,driver_version like the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    body = ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9"
            if fails else "\n".join([f"echo '{RTX}, {driver}'"] * gpus))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{body}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


@pytest.fixture
def gpu_machine(tmp_path, monkeypatch):
    """This machine, as torch sees a GPU box whose driver is too old for the torch build."""
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin')}:{'/usr/bin:/bin'}")
    monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "no-proc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what the old driver makes it say
    return tmp_path


def test_unusable_gpus_are_named_with_the_driver_and_the_build_to_install(gpu_machine):
    message = hardware.unusable_gpus()
    assert message and "\n" not in message
    assert f"4 NVIDIA GPU(s) ({RTX}, driver {OLD_DRIVER})" in message
    assert f"torch {torch.__version__}" in message
    if torch.version.cuda:
        assert f"CUDA {torch.version.cuda}" in message
    if torch.version.cuda and int(torch.version.cuda.split(".")[0]) >= 13:
        assert "needs driver 580.65.06 or newer" in message
    assert "--index-url https://download.pytorch.org/whl/cu126" in message  # CUDA 12 runs on 535


def test_auto_refuses_in_one_line_while_cpu_runs(gpu_machine):
    with pytest.raises(ConfigError) as refused:
        make_config("auto", strategy="allreduce", nproc=2)
    assert "\n" not in str(refused.value) and "--profile cpu" in str(refused.value)
    assert OLD_DRIVER in str(refused.value)
    cfg = make_config("cpu", strategy="allreduce", nproc=2)  # asking for the cpu works
    assert (cfg.device, cfg.backend) == ("cpu", "gloo")


def test_a_machine_without_gpus_still_gets_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "no-proc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.system_gpus() == [] and hardware.unusable_gpus() is None
    assert hardware.auto_profile()[0] == "cpu"


@pytest.mark.parametrize("smi", ["absent", "failing"])
def test_the_kernel_drivers_files_are_read_when_nvidia_smi_cannot_answer(tmp_path, monkeypatch, smi):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi == "failing":  # nvidia-smi fails when its library and the kernel module differ
        fake_nvidia_smi(bin_dir, fails=True)
    monkeypatch.setenv("PATH", str(bin_dir))
    proc = tmp_path / "proc"
    (proc / "version").parent.mkdir(parents=True)
    (proc / "version").write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {OLD_DRIVER}  "
                                  "Release Build  (dvs-builder@U16-I3-B03-4-3)  Tue Aug 27 21:54:55 UTC 2024\n"
                                  "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    for bus in ("0000:01:00.0", "0000:41:00.0"):
        (proc / "gpus" / bus).mkdir(parents=True)
        (proc / "gpus" / bus / "information").write_text(f"Model: \t\t {RTX}\nIRQ:   \t\t 140\nBus Type: \t PCIe\n")
    monkeypatch.setattr(hardware, "NVIDIA_PROC", proc)
    assert hardware.system_gpus() == [(RTX, OLD_DRIVER)] * 2


def test_nccl_line_reports_the_loaded_library():
    loaded = hardware.nccl_loaded()
    line = hardware.nccl_line()
    if loaded is None:
        assert line.startswith("not loaded")
    else:  # the library answered ncclGetVersion itself
        version, path = loaded
        assert re.fullmatch(r"\d+\.\d+\.\d+", version) and "libnccl" in path
        assert line.startswith(f"{version} loaded from {path}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch uses this machine's GPUs: nothing to refuse")
def test_labkit_check_and_run_on_a_gpu_machine_torch_cannot_use(tmp_path):
    env = {"PATH": f"{fake_nvidia_smi(tmp_path / 'bin')}:/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "labkit.cli", "machine"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in check.stdout.splitlines())
    assert rows["nvidia driver"] == OLD_DRIVER and rows["gpus"] == "0 usable by torch, 4 on the system"
    assert rows["auto profile"].startswith("stops: this machine has 4 NVIDIA GPU(s)")
    run = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--strategy", "allreduce", "--max-steps", "1",
                          "--out", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "--profile cpu" in run.stderr
    assert not (tmp_path / "run").exists()
