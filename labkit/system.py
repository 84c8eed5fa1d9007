"""What the operating system offers the lab, asked in one place.

The lab runs on Linux and macOS (Windows: inside WSL2, which is Linux). Where they differ:

                          Linux                          macOS
    loopback interface    lo                             lo0       (gloo's socket on one node)
    dying with a parent   PR_SET_PDEATHSIG (the kernel)  a thread watching getppid()
    process facts         /proc                          psutil
    network namespaces    yes: the emulated cluster      no: notebook 07 shows its reference run

Every check reads `sys.platform` when it is called (not once at import), so that a test can
fake another system with monkeypatch and run the other branch for real.

Standard library (psutil where it is asked for): torchrun's wrapper imports this before torch.
"""

from __future__ import annotations

import socket
import sys

WINDOWS = ("labkit runs on Linux and macOS, not on Windows itself: use WSL2 "
           "(`wsl --install` in PowerShell, then the README's commands inside Ubuntu)")


def is_linux() -> bool:
    return sys.platform.startswith("linux")


def is_macos() -> bool:
    return sys.platform == "darwin"


def name() -> str:
    """The system in words, for messages."""
    return "Linux" if is_linux() else "macOS" if is_macos() else "Windows" if sys.platform == "win32" else sys.platform


def unsupported() -> str | None:
    """One line where labkit cannot run on this system at all (Windows outside WSL2), else None."""
    return WINDOWS if sys.platform in ("win32", "cygwin") else None


def loopback_interface(interfaces: dict | None = None) -> str:
    """The interface that holds 127.0.0.1 (`lo` on Linux, `lo0` on macOS), asked of the system
    (psutil.net_if_addrs, or `interfaces` in that form); the system's usual name if none says."""
    if interfaces is None:
        try:
            import psutil

            interfaces = psutil.net_if_addrs()
        except Exception:  # psutil missing or unable to list: the usual name below
            interfaces = {}
    for interface, addresses in sorted(interfaces.items()):
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addresses):
            return interface
    return "lo0" if is_macos() else "lo"
