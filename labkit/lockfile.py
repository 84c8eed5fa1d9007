"""requirements.lock: the exact versions every install of the lab uses (made by pip-compile,
refreshed with `make lock`), and how this environment compares with it (`labkit check`)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from labkit.config import LAB_ROOT

LOCK = LAB_ROOT / "requirements.lock"


def pinned(path: Path = LOCK) -> dict[str, str]:
    """{package: version} from a pip-compile lock (lines `name==version`)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[canonicalize_name(match[1])] = match[2]  # PEP 503: Foo_Bar.baz → foo-bar-baz
    return pins


def differences(path: Path = LOCK) -> list[str]:
    """One line per locked package whose installed version differs (or that is missing)."""
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
    """What `labkit check` prints on its 'lock' line."""
    found = differences(path)
    if not found:
        return f"every package matches {Path(path).name}"
    return (f"{len(found)} package(s) differ from {Path(path).name} ({'; '.join(found[:3])}"
            f"{'; …' if len(found) > 3 else ''}); reinstall with `make install` or "
            f"`pip install -r requirements.lock`")
