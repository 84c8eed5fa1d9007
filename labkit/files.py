"""Atomic writes: a reader (or a crash) never sees half a file.

Write to a temporary file in the same folder, fsync it, then os.replace() it over
the final name — a rename within one filesystem is atomic.
"""

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, data) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(data, indent=1) + "\n").encode()))


def save_checkpoint(path, state: dict) -> None:
    _atomic(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path, map_location="cpu") -> dict:
    # weights_only: never unpickle arbitrary objects from a file on disk.
    return torch.load(path, map_location=map_location, weights_only=True)
