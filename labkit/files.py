"""Atomic writes: a reader (or a crash) never sees half a file.

Write to a temporary file in the same folder, fsync it, then os.replace() it over
the final name — a rename within one filesystem is atomic. A write that fails leaves the
file as it was (the last good result or checkpoint stays), and a full disk says so in one
line, whatever the writer made of it (torch.save reports "unexpected pos" from its C++ side).
"""

import errno
import json
import os
import tempfile
from pathlib import Path


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _said(error, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        full = _disk_full(path.parent, error)  # before the partial file is removed and frees space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on {path.parent} (writing {path.name}); free some space "
                                        f"and resume the run") from None
        raise


def _disk_full(folder: Path, error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return isinstance(error, (OSError, RuntimeError)) and os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _said(error: OSError, path: Path) -> OSError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(error.errno, f"no space left on {path.parent} (writing {path.name})")
    return error


def write_json(path, data) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(data, indent=1) + "\n").encode()))


def write_bytes(path, data: bytes) -> None:
    _atomic(path, lambda handle: handle.write(data))


def save_checkpoint(path, state: dict) -> None:
    import torch

    _atomic(path, lambda handle: torch.save(state, handle))


class CorruptCheckpoint(ValueError):
    """A checkpoint file that torch cannot read as one."""


def load_checkpoint(path, map_location="cpu") -> dict:
    import pickle
    import zipfile

    import torch

    # weights_only: never unpickle arbitrary objects from a file on disk. A file that is not a
    # checkpoint (cut short, overwritten, random bytes) is said to be so — not answered with
    # torch's hint to switch that safety off.
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in first or "Weights only load failed" in str(error):
            first = "it is not a checkpoint this lab wrote"
        raise CorruptCheckpoint(f"{path} is corrupt or not a checkpoint ({first[:160]}); "
                                f"start the run afresh in a new folder") from None
