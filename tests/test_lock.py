"""The environment is reproducible on every supported platform: one universal lock (markers
per platform), used by every install, resolved here for each platform, checked by `labkit machine`."""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, labkit_cli
from labkit import lockfile, system

# uv's name for each platform the lab supports, and its macOS floor (torch 2.14's arm64 wheel
# is built for macOS 14): resolving for it needs no such machine.
UV_PLATFORMS = {"linux-x86_64": ("x86_64-manylinux_2_28", {}),
                "linux-aarch64": ("aarch64-manylinux_2_28", {}),
                "macos-arm64": ("aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "14.0"})}
UNREACHABLE = re.compile(r"(?i)(failed to fetch|error sending request|dns error|connect(ion)? (error|refused|timed out)|"
                         r"network is unreachable|could not connect|tcp connect error|operation timed out|offline)")


def test_the_lock_pins_every_package_exactly():
    text = (REPO / "requirements.lock").read_text()
    requirements = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+( ; .+)?", line) for line in requirements), \
        [line for line in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+( ; .+)?", line)]
    pins = lockfile.pinned()
    # the pair every machine we know can install (some cap pip at torch 2.14.1)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert "nbgrader" in pins and "pytest" in pins and "uv" in pins  # the lock covers the test and course tools too


def test_the_cuda_stack_is_locked_for_linux_only():
    """The reason the lock is universal: the CUDA stack torch pulls on Linux has no macOS wheels."""
    linux = lockfile.pinned(environment=lockfile.PLATFORMS["linux-x86_64"])
    arm = lockfile.pinned(environment=lockfile.PLATFORMS["linux-aarch64"])
    mac = lockfile.pinned(environment=lockfile.PLATFORMS["macos-arm64"])
    cuda = {name for name in linux if name.startswith(("nvidia-", "cuda-")) or name == "triton"}
    assert {"nvidia-nccl-cu13", "cuda-bindings", "triton"} <= cuda and cuda <= set(arm)
    assert not cuda & set(mac), cuda & set(mac)
    assert "appnope" in mac and "appnope" not in linux  # ipykernel's macOS-only dependency
    for pins in (linux, arm, mac):  # the same lab everywhere: one version of each shared package
        assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["nbgrader"] == linux["nbgrader"]


def test_make_installs_from_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "-r requirements.lock" in makefile  # install
    assert re.search(r"uv pip compile --universal .*-o requirements\.lock", makefile.replace("\\\n", " "))  # make lock


@pytest.fixture(scope="module")
def uv() -> str:
    """uv from this environment (requirements-test.txt installs it); skipped, in one line, only
    when it cannot reach the package index."""
    found = shutil.which("uv", path=os.path.dirname(sys.executable))
    assert found, "uv is not installed in this environment: pip install -r requirements.lock"
    probe = subprocess.run([found, "pip", "compile", "-", "--no-header", "--python-platform", "linux"],
                           input="packaging\n", capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 and UNREACHABLE.search(probe.stderr):
        pytest.skip(f"uv cannot reach the package index: {probe.stderr.strip().splitlines()[-1]}")
    assert probe.returncode == 0, probe.stderr
    return found


@pytest.mark.parametrize("python", ["3.11", "3.13"])
@pytest.mark.parametrize("target", list(UV_PLATFORMS))
def test_the_lock_resolves_on_each_platform(uv, target, python, tmp_path):
    """uv resolves the lock as that machine would (wheels only: a package with no wheel for the
    platform fails here), and gets exactly the entries lockfile.pinned says hold there."""
    uv_platform, env = UV_PLATFORMS[target]
    full = platform.python_version() if python == platform.python_version().rsplit(".", 1)[0] else f"{python}.0"
    proc = subprocess.run([uv, "pip", "compile", str(REPO / "requirements.lock"), "--python-platform", uv_platform,
                           "--python-version", full, "--only-binary", ":all:", "--no-header", "--no-annotate"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved = dict(re.match(r"([^=\s]+)==(\S+)", line).groups() for line in proc.stdout.splitlines()
                    if re.match(r"[^=\s#]+==", line))
    environment = {**lockfile.PLATFORMS[target], "python_version": python, "python_full_version": full}
    expected = lockfile.pinned(environment=environment)
    assert {lockfile.canonicalize_name(n): v for n, v in resolved.items()} == expected
    assert resolved["torch"] == "2.14.1"


def test_check_compares_installed_versions_with_the_lock(tmp_path):
    assert "every package matches requirements.lock" in labkit_cli("machine").stdout  # CI installs from it
    stale = tmp_path / "requirements.lock"
    stale.write_text("torch==1.0.0\nno-such-package-xyz==1.2\n")
    found = lockfile.differences(stale)
    assert any(line.startswith("torch: ") and "lock says 1.0.0" in line for line in found)
    assert "no-such-package-xyz: not installed (lock: 1.2)" in found


def test_check_compares_only_this_platforms_entries(tmp_path, monkeypatch):
    """An entry for another platform is neither required nor compared; faked as macOS, the
    Linux entries are the ones left out."""
    from importlib import metadata

    lock = tmp_path / "requirements.lock"
    packaging_version = metadata.version("packaging")
    lock.write_text(f"packaging=={packaging_version}\n"
                    "pywinpty-xyz==3.1.2 ; sys_platform == 'win32'\n"
                    "appnope-xyz==1.0.0 ; sys_platform == 'darwin'\n"
                    "nvidia-xyz==13.0 ; sys_platform == 'linux'\n"
                    "soupsieve-xyz==2.10 ; python_full_version < '3.11.0'\n")
    here = "nvidia-xyz: not installed (lock: 13.0)" if system.is_linux() else "appnope-xyz: not installed (lock: 1.0.0)"
    assert lockfile.differences(lock) == [here]  # this machine's entries only
    mac = lockfile.PLATFORMS["macos-arm64"]
    assert set(lockfile.pinned(lock, environment=mac)) == {"packaging", "appnope-xyz"}


def test_names_are_compared_in_their_canonical_form(tmp_path):
    from importlib import metadata

    assert "packaging" in lockfile.pinned()  # lockfile.py imports it (canonicalize_name): it must be locked
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"Typing_Extensions=={metadata.version('typing-extensions')}\nJinja2==0.0.1\n")
    assert set(lockfile.pinned(lock)) == {"typing-extensions", "jinja2"}  # PEP 503 names
    assert lockfile.differences(lock) == [f"jinja2: {metadata.version('jinja2')} installed, lock says 0.0.1"]


def test_torch_floor_is_declared_once_and_checked():
    assert str(lockfile.floor("torch")) == ">=2.14" and str(lockfile.floor("torchvision")) == ">=0.29"
    assert lockfile.torch_problem() is None  # the locked torch is supported
    assert lockfile.torch_problem("2.14.1+cu130") is None
    line = lockfile.torch_problem("2.13.0+cpu")
    assert "torch 2.13.0+cpu is older than labkit supports (torch>=2.14" in line and "pip install 'torch>=2.14'" in line
    assert "\n" not in line


def test_an_unsupported_torch_gets_one_line_from_the_first_command(tmp_path):
    """An environment whose torch is older than the floor (its metadata found first, as an
    older install would be): `labkit` stops in one line before importing it; check says it."""
    info = tmp_path / "torch-2.13.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = labkit_cli("strategies", check=False, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("labkit: error: torch 2.13.0 is older than labkit supports") and \
        proc.stderr.count("\n") == 1, proc.stderr
    check = labkit_cli("machine", env=env).stdout
    assert re.search(r"^torch\s+torch 2\.13\.0 is older than labkit supports", check, re.M), check


def test_windows_is_told_to_use_wsl2(monkeypatch, capsys):
    from labkit.cli import main

    monkeypatch.setattr(sys, "platform", "win32")
    assert system.unsupported() and "WSL2" in system.unsupported()
    assert main(["strategies"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit: error: labkit runs on Linux and macOS") and "WSL2" in err and err.count("\n") == 1
