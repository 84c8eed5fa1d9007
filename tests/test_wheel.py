"""labkit as an installable package: the wheel built from pyproject.toml holds every module of
the source tree, and each one imports from the wheel's own copy in a fresh virtual environment
that has nothing of labkit but the wheel (its dependencies come from this environment, so
nothing is downloaded: an environment that already has a supported torch keeps it)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

from conftest import REPO

PACKAGE = REPO / "labkit"


def source_modules() -> set[str]:
    return {str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built as `pip wheel` does (without build isolation: setuptools is in the lock),
    from a copy of the sources: setuptools' build/ in the checkout could hold a stale module."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=300, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("labkit-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_module_and_declares_its_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    packaged = {name for name in names if name.startswith("labkit/") and name.endswith(".py")}
    missing = source_modules() - packaged
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    assert "labkit/notebook/__init__.py" in packaged  # the one a hand-written list once forgot
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "torch>=2.14" in requires and "torchvision>=0.29" in requires  # the floors the code runs on
    assert any(r.startswith("packaging") for r in requires)  # labkit/lockfile.py imports it
    assert "labkit = labkit.cli:main" in entry_points


def test_every_module_imports_from_the_wheel_in_a_fresh_environment(wheel, tmp_path):
    """A new venv (no labkit, no editable finder: this environment's site-packages is only
    appended to its path by a .pth, whose own .pth files are not run), the wheel installed into
    it without dependencies; every module is then imported there, and each must come from it."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (tmp_path / "venv" / fresh_site.split(str(env_dir) + os.sep, 1)[1] / "dependencies.pth").write_text(ours + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    modules = sorted(path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                     for path in source_modules())
    script = ("import importlib, json, sys\n"
              "found = {}\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    found[name] = importlib.import_module(name).__file__\n"
              "print(json.dumps(found))\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    clean["LABKIT_TORCHRUN_PID"] = str(os.getpid())  # forkserver_init, on import, dies with this (its parent)
    proc = subprocess.run([python, "-c", script, json.dumps(modules)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=clean)  # cwd: not the checkout
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    outside = {name: path for name, path in files.items() if not path.startswith(fresh_site + os.sep)}
    assert not outside, f"imported from elsewhere than the wheel: {outside}"
    assert set(files) == set(modules)
    root = subprocess.run([python, "-c", "from labkit.config import LAB_ROOT; print(LAB_ROOT)"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=clean).stdout.strip()
    assert root == str(tmp_path.resolve())  # data/ and results/ where the user works, not in site-packages
    cli = subprocess.run([env_dir / "bin" / "labkit", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=clean)
    assert cli.returncode == 0 and "usage: labkit" in cli.stdout, cli.stderr[-2000:]
