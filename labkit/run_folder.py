"""A run owns its folder: what may start where, and the lock that keeps it so.

    check_new(folder)        # a fresh run: the folder does not exist, or is empty
    check_resumable(folder)  # --resume: the folder holds this lab's unfinished run
    lock = FolderLock(folder).acquire()   # held for the run's whole life (the launcher and torchrun)
    lock.release()                        # at the end: the lock file is removed

Everything here runs before anything is written, and without torch: a refusal is one line,
in well under a second. The lock is an flock on `.labkit.lock` inside the folder, so it locks
the folder by its path whatever the run is called; the kernel drops it when its holders die,
however they die, so a lock file left by a killed launcher locks nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from labkit.errors import ConfigError

LOCK_NAME = ".labkit.lock"  # node 0's (every run has a node 0); another node's: .labkit-nodeK.lock


def lock_name(node_rank: int = 0) -> str:
    return LOCK_NAME if node_rank == 0 else f".labkit-node{node_rank}.lock"


def run_of(cfg) -> dict:
    """What check_new needs to know of a run on several real nodes: they may share one folder
    (a cluster's shared disk), each node writing its own config-nodeK.json and logs/node-K/."""
    shared = cfg.nodes > 1 and bool(cfg.rdzv_endpoint)
    return {"name": cfg.name if shared else None, "node_rank": cfg.node_rank}


def read_status(folder: Path) -> str | None:
    """The status in folder/result.json; None when there is none; 'unreadable' when it is not
    this lab's result (garbage, half a file, another program's JSON)."""
    path = Path(folder) / "result.json"
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return status if isinstance(status, str) else "unreadable"


def contents(folder: Path, name: str | None = None) -> list[str]:
    """The folder's entries, but for lock files (a killed launcher's leaves one: it locks nothing)
    and, for a run on several real nodes (`name`), what its other nodes wrote there already."""
    entries = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith(".labkit"))
    if name is None:
        return entries
    return [entry for entry in entries if not (entry in ("logs", "started") or
                                                (entry.startswith("config") and _names_run(folder / entry, name)))]


def _is_run_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"strategy", "name", "out_dir"} <= set(config)


def _names_run(path: Path, name: str) -> bool:
    try:
        return json.loads(path.read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def holder(folder: Path) -> str | None:
    """The pid written in the folder's lock, if a live run holds the lock now; else None."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # we get it only if nobody holds it exclusively
        return None
    except OSError:
        return path.read_text().strip() or "?"
    finally:
        os.close(fd)  # (closing drops the shared lock we may have taken)


def describe(folder: Path, locked: bool = False) -> str:
    """What the folder holds, in a few words, for a refusal (`locked`: we hold its lock)."""
    pid = None if locked else holder(folder)
    if pid:
        return f"a run in progress (launcher pid {pid})"
    names = contents(folder)
    status = read_status(folder)
    if status == "ok":
        return "a finished run (status ok)"
    if status == "unreadable":
        return "a result.json that is not a labkit result"
    if status:
        return f"an unfinished run (status {status})"
    if "config.json" in names and _is_run_config(Path(folder) / "config.json"):
        return "a run that never wrote a result"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"files that are not a run ({shown})"


def check_path(folder: Path) -> None:
    """The folder, or the nearest folder above it that exists, can hold a run (a directory,
    writable): one line otherwise, before anything is made."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{existing} is a file, not a folder; give --out a folder (new or empty)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {existing} (read-only or not yours); give --out a folder you can write")


def check_new(folder: Path, name: str | None = None, node_rank: int = 0, locked: bool = False) -> None:
    """A fresh run starts only in a folder that does not exist or is empty (a run on several
    real nodes, `name`: or that holds only what its other nodes wrote there). `locked`: the
    caller holds the folder's lock (the final check, at start), so it is not someone else's run."""
    folder = Path(folder)
    check_path(folder)
    if not folder.exists() or not contents(folder, name):
        return
    if name is not None and node_rank > 0 and (folder / "config.json").exists() and read_status(folder) is None:
        return  # node 0 wrote the run's config into the shared folder: this node joins it
    held = describe(folder, locked)
    hint = (f"resume it with labkit run --resume {folder}, or choose another --out or --name"
            if held.startswith("an unfinished run") else
            "wait for it to end, or choose another --out or --name" if held.startswith("a run in progress") else
            "choose another --out or --name (a new or empty folder)")
    raise ConfigError(f"{folder} already holds {held}; {hint}")


def check_resumable(folder: Path, locked: bool = False) -> None:
    """--resume: the folder holds this lab's run, unfinished, with a checkpoint to go on from."""
    folder = Path(folder)
    check_path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist; --resume takes the folder of an earlier run")
    pid = None if locked else holder(folder)
    if pid:
        raise ConfigError(f"{folder} holds a run in progress (launcher pid {pid}); wait for it to end")
    status = read_status(folder)
    if status == "ok":
        raise ConfigError(f"{folder} holds a finished run (status ok): nothing to resume, and its result stands")
    if status == "unreadable":
        raise ConfigError(f"{folder}/result.json is not a labkit result; this folder is not a run to resume")
    if not (folder / "config.json").exists() or not (folder / "checkpoint.pt").exists():
        raise ConfigError(f"{folder} holds no config.json and checkpoint.pt to resume from "
                          f"(a run checkpoints at each epoch's end, or every --set checkpoint_every=N steps)")


class FolderLock:
    """An exclusive flock on folder/.labkit.lock, never waited for: a folder in use is refused."""

    def __init__(self, folder: Path, node_rank: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / lock_name(node_rank)
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot make {self.folder}: {error.strerror}; give --out a folder you can write") from None
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as error:
                raise ConfigError(f"cannot write in {self.folder}: {error.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = self.path.read_text().strip() if self.path.exists() else "?"
                raise ConfigError(f"{self.folder} is in use by another run (launcher pid {holder}); "
                                  f"wait for it to end, or choose another --out or --name") from None
            # The holder before us may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else can find. Lock the one at the path instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then let go of the lock (in this order, so that nobody can lock
        the old file after we are done with it and believe the folder theirs)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
