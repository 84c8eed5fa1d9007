"""Reading how a job ended from torchrun's own files: its log's failure block, each
rank's error file (written by torch elastic's `record`), and a dead rank's last stderr words.

Pure reading: nothing here starts, stops or writes anything.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path


def read_failure(log_dir: Path, since: float = 0.0) -> dict | None:
    """The failure that brought the job down. torchrun's log ends with a block listing
    every failed rank (exit code, error file) and its guess at the "Root Cause (first
    observed failure)". The error file (written by @record in the worker) holds the
    exception and traceback; a rank that died without raising (os._exit, a signal) has
    none, so its exit code and the end of its stderr tell the cause. A plain process
    (`single`) writes logs/0/error.json."""
    launcher = log_dir / "launcher.log"
    text = launcher.read_text(errors="replace") if launcher.exists() else ""
    report = text.rsplit("Failures:", 1)[-1] if "Failures:" in text else ""
    entries = [parse_entry(block) for block in re.split(r"\n\[\d+\]:", report)[1:]]
    if entries:
        root = entries[-1]  # torchrun prints its root cause last
        # When one rank fails, the agent stops the others with SIGTERM, and a rank may
        # raise "connection reset by peer" just before: casualties, not the cause.
        causes = [e for e in entries if e["code"] != -signal.SIGTERM] or [root]
        entry = next((e for e in causes if e["rank"] == root["rank"]), causes[0])
        if entry["error_file"].is_file():
            record = error_record(entry["error_file"], entry["rank"])
            # Forked ranks (--start-method=forkserver) are reported one only: the first torchrun
            # observed, often a rank that lost its peer. Then the cause is in another file.
            return own_failure(entry["error_file"].parent.parent, entry) if LOST_PEER.search(record["exception"]) \
                else record
        code = entry["code"]
        cause = (f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                 else f"exited with exit code {code} without raising")
        last_words = stderr_tail(log_dir, entry["local_rank"])
        return {"rank": entry["rank"], "exception": cause + (f": {last_words[-1]}" if last_words else ""),
                "traceback": "\n".join(last_words) or entry["traceback"]}
    single = log_dir / "0" / "error.json"
    if single.is_file() and single.stat().st_mtime >= since:
        return error_record(single, 0)
    return None


# What a rank raises when another rank died first (gloo, NCCL): a casualty, not a cause.
LOST_PEER = re.compile(r"[Cc]onnection (closed|reset) by peer|Broken pipe|[Cc]ommunicator was aborted")


def own_failure(attempt_dir: Path, reported: dict) -> dict:
    """The rank that failed on its own in this attempt: the earliest error file that is not a
    lost peer, else a rank that left no error file (it died without raising: exit or
    signal), else the earliest lost peer. Folders are local ranks; the global rank keeps the
    reported entry's offset (the node's first rank)."""
    offset = reported["rank"] - reported["local_rank"]
    ranks = sorted((int(p.name), p) for p in attempt_dir.iterdir() if p.name.isdigit())
    written = sorted(((p / "error.json").stat().st_mtime_ns, rank, p / "error.json") for rank, p in ranks
                     if (p / "error.json").is_file())
    for _, rank, path in written:
        record = error_record(path, offset + rank)
        if not LOST_PEER.search(record["exception"]):
            return record
    for rank, p in ranks:
        if not (p / "error.json").is_file():
            last_words = stderr_tail(attempt_dir.parent.parent, rank)
            return {"rank": offset + rank, "exception": "died without raising (an exit or a signal)"
                    + (f": {last_words[-1]}" if last_words else ""), "traceback": "\n".join(last_words)}
    return error_record(written[0][2], offset + written[0][1])


def parse_entry(block: str) -> dict:
    field = lambda name: (re.search(rf"{name}\s*:\s*(.*)", block) or [None, ""])[1].strip()
    ranks = re.match(r"(\d+)(?: \(local_rank: (\d+)\))?", field("rank"))
    return {"rank": int(ranks[1]), "local_rank": int(ranks[2] or ranks[1]),
            "code": int(re.match(r"-?\d+", field("exitcode")).group()), "error_file": Path(field("error_file")),
            "traceback": re.split(r"\n[=-]{8,}", block.split("traceback :")[-1])[0].strip()}


def stderr_tail(log_dir: Path, local_rank: int, lines: int = 3) -> list[str]:
    """The last words a rank wrote before it died (a C++ abort prints `what(): …`)."""
    logs = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return []
    text = [line.strip() for line in logs[-1].read_text(errors="replace").splitlines()]
    aborts = [line for line in text if line.startswith("what():")]
    return aborts[-1:] or [line for line in text if line and not line.startswith("File ")][-lines:]


def error_record(path: Path, rank: int) -> dict:
    """One rank's error file, as torch's elastic `record` writes it."""
    message = json.loads(path.read_text())["message"]
    if isinstance(message, str):
        message = {"message": message, "extraInfo": {}}
    return {"rank": rank, "exception": message.get("message", "").strip(),
            "traceback": message.get("extraInfo", {}).get("py_callstack", "")}


def describe_failure(result: dict) -> str:
    failure = result.get("failure") or {}
    head = f"run {result.get('name')} {result.get('status')}"
    if not failure:
        return f"{head} (exit code {result.get('exit_code')}; see its logs/)"
    return (f"{head}: rank {failure['rank']}: {failure['exception']}\n"
            f"{failure.get('traceback', '').rstrip()}")
