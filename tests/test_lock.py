"""The environment is reproducible: one lock, used by every install, checked by `labkit check`."""

import re

from conftest import REPO, labkit_cli
from labkit import lockfile


def test_the_lock_pins_every_package_exactly():
    text = (REPO / "requirements.lock").read_text()
    requirements = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", line) for line in requirements), requirements
    pins = lockfile.pinned()
    # the pair every machine we know can install (some cap pip at torch 2.14.1)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert "nbgrader" in pins and "pytest" in pins  # the lock covers the test and course tools too


def test_make_installs_from_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "-r requirements.lock" in makefile and "pip-compile" in makefile  # install, and `make lock`


def test_check_compares_installed_versions_with_the_lock(tmp_path):
    assert "every package matches requirements.lock" in labkit_cli("check").stdout  # CI installs from it
    stale = tmp_path / "requirements.lock"
    stale.write_text("torch==1.0.0\nno-such-package-xyz==1.2\n")
    found = lockfile.differences(stale)
    assert any(line.startswith("torch: ") and "lock says 1.0.0" in line for line in found)
    assert "no-such-package-xyz: not installed (lock: 1.2)" in found


def test_names_are_compared_in_their_canonical_form(tmp_path):
    from importlib import metadata

    assert "packaging" in lockfile.pinned()  # lockfile.py imports it (canonicalize_name): it must be locked
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"Typing_Extensions=={metadata.version('typing-extensions')}\nJinja2==0.0.1\n")
    assert set(lockfile.pinned(lock)) == {"typing-extensions", "jinja2"}  # PEP 503 names
    assert lockfile.differences(lock) == [f"jinja2: {metadata.version('jinja2')} installed, lock says 0.0.1"]
