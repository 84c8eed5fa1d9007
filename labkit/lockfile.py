"""requirements.lock: the exact versions every install of the lab uses, and how this environment
compares with it (`labkit machine`).

One lock for every supported platform (Linux x86_64 and aarch64, macOS arm64; Python 3.11 and
later): a universal resolution (`uv pip compile --universal`, `make lock`) in which an entry that
holds on some platforms only carries its environment marker, e.g.

    nvidia-nccl-cu13==2.30.7 ; sys_platform == 'linux'     (the CUDA stack: Linux only)
    appnope==1.0.0 ; sys_platform == 'darwin'              (macOS only)

pip and uv install the entries whose markers hold where they run; this module compares the
environment with those same entries. The installed labkit's own floor for torch (pyproject's
dependencies) is checked here too: an older torch gets one line, not a traceback deep in a run.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from labkit.config import LAB_ROOT

LOCK = LAB_ROOT / "requirements.lock"
PYPROJECT = LAB_ROOT / "pyproject.toml"

# The marker values of the platforms the lock is made for (PEP 508 names), for tests and for
# resolving the lock as another machine would; `environment=None` everywhere means this one.
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
}


def entries(path: Path = LOCK) -> list[tuple[str, str, Marker | None]]:
    """(package, version, marker or None) of every `name==version [; marker]` line."""
    found = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(pins) == 1:  # PEP 503 name: Foo_Bar.baz → foo-bar-baz
            found.append((canonicalize_name(requirement.name), pins[0], requirement.marker))
    return found


def pinned(path: Path = LOCK, environment: dict | None = None) -> dict[str, str]:
    """{package: version} of the lock's entries whose markers hold in `environment` (marker
    values overriding this interpreter's; None: this machine as it is)."""
    return {name: version for name, version, marker in entries(path)
            if marker is None or marker.evaluate(environment)}


def differences(path: Path = LOCK) -> list[str]:
    """One line per package locked for this platform whose installed version differs (or that is missing)."""
    if not Path(path).exists():
        return [f"{path} not found"]
    lines = []
    for name, version in sorted(pinned(path).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            lines.append(f"{name}: not installed (lock: {version})")
            continue
        if installed.split("+")[0] != version.split("+")[0]:  # torch's +cu130 local tag is the same release
            lines.append(f"{name}: {installed} installed, lock says {version}")
    return lines


def summary(path: Path = LOCK) -> str:
    """What `labkit machine` prints on its 'lock' line."""
    if not Path(path).exists():  # labkit installed as a package, into an environment of its own
        return f"no {Path(path).name} beside labkit (installed as a package): this environment's own versions"
    found = differences(path)
    if not found:
        return f"every package matches {Path(path).name} (its entries for this platform)"
    return (f"{len(found)} package(s) differ from {Path(path).name} ({'; '.join(found[:3])}"
            f"{'; …' if len(found) > 3 else ''}); reinstall with `make install` or "
            f"`pip install -r requirements.lock`")


def declared(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """labkit's declared dependencies: the checkout's pyproject.toml where there is one (it is
    what an install from here gets), else the installed package's metadata (a wheel's)."""
    if Path(pyproject).exists():
        lines = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    else:
        try:
            lines = metadata.requires("labkit") or []
        except metadata.PackageNotFoundError:
            lines = []
    return [Requirement(line) for line in lines]


def floor(package: str, pyproject: Path = PYPROJECT) -> SpecifierSet:
    """The versions of `package` labkit supports (its declared dependency)."""
    return next((r.specifier for r in declared(pyproject)
                 if canonicalize_name(r.name) == canonicalize_name(package) and r.marker is None), SpecifierSet())


def torch_problem(installed: str | None = None, supported: SpecifierSet | None = None) -> str | None:
    """One line if torch is missing or older than labkit supports, else None. Read from the
    package metadata: torch is not imported (an old one may fail on import, or take seconds)."""
    supported = floor("torch") if supported is None else supported
    upgrade = f"pip install 'torch{supported}' 'torchvision{floor('torchvision')}'"
    if installed is None:
        try:
            installed = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return f"torch is not installed; labkit needs torch{supported}: {upgrade}"
    if supported.contains(Version(installed.split("+")[0]), prereleases=True):
        return None
    return (f"torch {installed} is older than labkit supports (torch{supported}: it uses dist.all_gather_single "
            f"and FSDP2's fully_shard); upgrade it: {upgrade}")
