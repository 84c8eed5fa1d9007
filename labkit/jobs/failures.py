"""Reading how a job ended: the failures torch's launcher reported (failures.json, written by
labkit.jobs.torchrun from `ChildFailedError.failures`), each rank's error file (written by
torch elastic's `record`), a dead rank's last stderr words, and each rank's last collectives
(which one it was in, and the rank whose sequence differs: collective_story).

Pure reading: nothing here starts, stops or writes anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def read_failure(log_dir: Path, since: float = 0.0) -> dict | None:
    """The failure that brought the job down: {rank, exception, traceback, exit_code, signal,
    error_file}, or None. torch reports the ranks it saw fail, each with its exit code and
    error file (the exception and traceback, written by @record in the worker). A rank that
    died without raising (os._exit, a signal) has no error file: its exit code and the end of
    its stderr tell the cause. A plain process (`single`) writes 0/error.json."""
    reported = Path(log_dir) / "failures.json"
    if reported.is_file() and reported.stat().st_mtime >= since:
        return cause_of(json.loads(reported.read_text()), Path(log_dir))
    single = Path(log_dir) / "0" / "error.json"
    if single.is_file() and single.stat().st_mtime >= since:
        return error_record(single, 0)
    return None


def cause_of(reported: list[dict], log_dir: Path) -> dict:
    """Among the ranks torch reported, the cause. When one rank fails, torch stops the others
    with SIGTERM: those are casualties. Forked ranks (--start-method=forkserver) are reported
    one only, the first torch saw end; if that one merely lost its peer, the cause is in
    another rank's files (own_failure)."""
    causes = [r for r in reported if r["signal"] != "SIGTERM"] or reported
    entry = min(causes, key=lambda r: r["timestamp"])  # torch's "first observed failure"
    found = {"exit_code": entry["exit_code"], "signal": entry["signal"], "error_file": entry["error_file"]}
    if entry["error_file"]:
        record = error_record(Path(entry["error_file"]), entry["rank"])
        if LOST_PEER.search(record["exception"]):
            return own_failure(Path(entry["error_file"]).parent.parent, entry)
        return {**record, **found}
    cause = (f"killed by signal {-entry['exit_code']} ({entry['signal']})" if entry["signal"]
             else f"exited with exit code {entry['exit_code']} without raising")
    last_words = stderr_tail(log_dir, entry["local_rank"])
    return {"rank": entry["rank"], "exception": cause + (f": {last_words[-1]}" if last_words else ""),
            "traceback": "\n".join(last_words), **found}


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
            return {**record, "exit_code": None, "signal": None, "error_file": str(path)}
    for rank, p in ranks:
        if not (p / "error.json").is_file():
            last_words = stderr_tail(attempt_dir.parent.parent, rank)
            return {"rank": offset + rank, "exception": "died without raising (an exit or a signal)"
                    + (f": {last_words[-1]}" if last_words else ""), "traceback": "\n".join(last_words),
                    "exit_code": None, "signal": None, "error_file": None}
    return {**error_record(written[0][2], offset + written[0][1]), "exit_code": None, "signal": None,
            "error_file": str(written[0][2])}


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
    story = failure.get("collectives") or {}
    return (f"{head}: rank {failure['rank']}: {failure['exception']}\n"
            + (f"collectives: {story['summary']}\n" if story else "")
            + f"{failure.get('traceback', '').rstrip()}")


def collective_story(log_dir: Path) -> dict | None:
    """Which collective each rank had finished last and which one it was in, from each rank's
    logs/collectives-RANK.jsonl (labkit.training.collective_log), and the rank whose sequence
    differs from the others': {by_rank, odd_rank, summary}, or None without records.

    Two ways a sequence breaks. A mismatch: the ranks' collectives of one number differ
    (operation or size) — the odd one is the one most ranks disagree with, or, two against
    one being impossible with two ranks, the one whose step differs from its own previous
    step. A rank behind: it never entered the collective the others wait in (it hangs, or
    died, before it)."""
    from labkit.training.collective_log import read_collectives

    records = {}
    for path in Path(log_dir).glob("collectives-*.jsonl"):
        try:
            records[int(path.stem.split("-")[1])] = read_collectives(path)
        except (OSError, ValueError, IndexError):
            continue
    if len(records) < 2:
        return None
    records = dict(sorted(records.items()))
    by_rank = {}
    for rank, record in records.items():
        through = record.get("finished_through", 0)  # the loop's last step boundary: all before it is done
        seqs = {e["seq"]: e for e in record["collectives"]}
        done = max([through] + [s for s, e in seqs.items() if e.get("done")])  # the backend's completions
        open_ = [s for s, e in seqs.items() if s > through and not e.get("done")]
        by_rank[rank] = {"step": record.get("step", 0), "last_finished": seqs.get(done),
                         "in": seqs[min(open_)] if open_ else None, "finished_through": done}
    odd, why = _mismatch(records) or _behind(by_rank) or (None, "every rank's collectives agree")
    lines = [f"rank {rank} " + _where(state) for rank, state in by_rank.items()]
    return {"by_rank": by_rank, "odd_rank": odd, "summary": "; ".join(lines) + f" — {why}"}


def _where(state: dict) -> str:
    finished = state["last_finished"]
    done = f"#{finished['seq']} {_name(finished)}" if finished else f"#{state['finished_through']}"
    if state["in"]:
        return f"in {_name(state['in'])} #{state['in']['seq']} (step {state['in']['step']}), last finished {done}"
    return f"in no collective at step {state['step']}, last finished {done}"


def _name(entry: dict) -> str:
    return f"{entry['op']} of {entry['bytes']} B"


def _mismatch(records: dict) -> tuple[int, str] | None:
    """The first collective number the ranks disagree on, and the rank that broke it."""
    entries = {rank: {e["seq"]: e for e in record["collectives"]} for rank, record in records.items()}
    common = set.intersection(*(set(seqs) for seqs in entries.values()))
    for seq in sorted(common):
        kinds = {rank: (seqs[seq]["op"], seqs[seq]["bytes"]) for rank, seqs in entries.items()}
        if len(set(kinds.values())) == 1:
            continue
        counts = {kind: list(kinds.values()).count(kind) for kind in kinds.values()}
        majority = max(counts.values())
        odd = [rank for rank, kind in kinds.items() if counts[kind] < majority]
        if len(odd) != 1:  # no majority (two ranks): the rank whose step broke its own pattern
            odd = [rank for rank, seqs in entries.items() if _breaks_own_pattern(seqs, seq)] or odd
        step = entries[odd[0]][seq]["step"]
        others = ", ".join(f"rank {r}: {_name(entries[r][seq])}" for r in entries if r != odd[0])
        return odd[0], (f"rank {odd[0]}'s sequence differs from step {step}: its collective #{seq} is "
                        f"{_name(entries[odd[0]][seq])} ({others}); it skipped or added one")
    return None


def _breaks_own_pattern(seqs: dict, seq: int) -> bool:
    """Is collective `seq` unlike the one at the same place in this rank's previous step?"""
    entry = seqs[seq]
    this_step = [s for s in sorted(seqs) if seqs[s]["step"] == entry["step"]]
    before = [s for s in sorted(seqs) if seqs[s]["step"] == entry["step"] - 1]
    index = this_step.index(seq)
    if not before or index >= len(before):
        return False
    previous = seqs[before[index]]
    return (previous["op"], previous["bytes"]) != (entry["op"], entry["bytes"])


def _behind(by_rank: dict) -> tuple[int, str] | None:
    """A rank that never entered the collective the others are in."""
    waiting = {rank: state["in"] for rank, state in by_rank.items() if state["in"]}
    idle = [rank for rank, state in by_rank.items() if not state["in"]]
    if not waiting or not idle:
        return None
    seq = min(entry["seq"] for entry in waiting.values())
    rank = min(idle, key=lambda r: by_rank[r]["finished_through"])
    entry = next(e for e in waiting.values() if e["seq"] == seq)
    return rank, (f"rank {rank}'s sequence is behind: it never entered {_name(entry)} #{seq} "
                  f"(step {entry['step']}), where the other rank(s) wait for it")
