"""Where a short run's time goes, seen from outside: `labkit run` started as a user starts it,
its run folder and process tree watched every 20 ms. docs/BENCHMARKS.md, "A short run's fixed cost".

    python bench/startup.py TREE LABEL [--repeats N] -- RUN ARGS...
    python bench/startup.py /tmp/lk-before before -- --strategy ddp --profile cpu --nproc 4 --max-steps 8
    python bench/startup.py --summarize RUNS.jsonl     # the median of each segment, per label: a table

TREE is a checkout of labkit (the lab as of one commit: `git archive COMMIT | tar -x -C TREE`),
run as `python -m labkit.cli run` from there with this interpreter, so that two versions can be
alternated on the same machine state without touching anyone's working tree. Results go to a
temporary folder ($LABKIT_RESULTS), never to the checkout's results/.

Prints one JSON line per run: the wall time and when each of these was first seen, in seconds
from the command's start: the agent (the CLI has made the config and started the job; or, since
the CLI starts torchrun while it checks the config, torchrun, labkit.jobs.job.prestart), the
forkserver, the first and last rank forked, heartbeat-0 (rank 0 is about to take its first step:
process group, model, calibration and loaders done), each progress line (a step done), steps.jsonl
and checkpoint.pt (the epoch's end: validation, then the checkpoint), result.json, the last rank
gone, torchrun gone, and the command's exit. `fixed_s` is the wall time less the run's own steps
(its step count × the median step of result.json): what the run costs besides training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from labkit.jobs.command import TORCHRUN_MODULE

POLL_S = 0.02


def command_of(proc: psutil.Process) -> str:
    """Its command line; "" once it has ended (a zombie included)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def watch(tree: Path, args: list[str], name: str, results: Path) -> dict:
    run_dir = results / "runs" / name
    env = {**os.environ, "LABKIT_RESULTS": str(results), "LABKIT_PROGRESS": "lines"}
    t0, t0_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", *args, "--name", name], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[str, float] = {}
    progress_lines: list[float] = []
    ranks_seen: set[int] = set()
    cli = psutil.Process(proc.pid)

    def note(event: str):
        seen.setdefault(event, round(time.perf_counter() - t0, 3))

    while proc.poll() is None:
        for file, event in (("started", "started"), ("logs/heartbeat-0", "heartbeat0"),
                            ("steps.jsonl", "steps_jsonl"), ("checkpoint.pt", "checkpoint"),
                            ("result.json", "result")):
            if event not in seen and (run_dir / file).exists():
                note(event)
        progress = run_dir / "progress.jsonl"
        if progress.exists():
            lines = progress.read_bytes().count(b"\n")
            while len(progress_lines) < lines:
                progress_lines.append(round(time.perf_counter() - t0, 3))
        try:
            family = cli.children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if any("agent.py" in command_of(child) or TORCHRUN_MODULE in command_of(child) for child in family):
            note("agent")  # the job's first process: the agent (config made), or torchrun prestarted
        forkservers = [child for child in family if "multiprocessing.forkserver" in command_of(child)]
        if forkservers:
            note("forkserver")
            ranks = set()
            for server in forkservers:
                try:
                    ranks |= {c.pid for c in server.children()}
                except psutil.NoSuchProcess:
                    pass
            if ranks - ranks_seen:
                note("first_rank")
                ranks_seen |= ranks
                if len(ranks_seen) >= 4:
                    note("last_rank")
            if ranks_seen and not ranks and "result" in seen:
                note("ranks_gone")
        try:  # the agent execs torchrun: the CLI's child, the same process, gone or a zombie
            direct = cli.children()
        except psutil.NoSuchProcess:
            direct = []
        if "result" in seen and not any(command_of(c) for c in direct):
            note("torchrun_gone")
        time.sleep(POLL_S)
    wall = round(time.perf_counter() - t0, 3)
    stderr = proc.stderr.read().decode(errors="replace")
    out = {"wall_s": wall, "exit": proc.returncode, **seen, "progress_s": progress_lines}
    result_path = run_dir / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        summary = result.get("summary", {})
        steps = len(result.get("steps", []))
        median = summary.get("step_time_median_s")
        out.update(status=result.get("status"), steps=steps, step_median_s=median,
                   fixed_s=round(wall - steps * median, 3) if median else None)
    # A tree instrumented by hand prints "PHASE <label> <time.time()>" to rank 0's stderr: placed here
    phases = {}
    for log in sorted(run_dir.glob("logs/**/0/stderr.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("PHASE "):
                phases[line.split()[1]] = round(float(line.split()[2]) - t0_wall, 3)
    for text in (stderr, (run_dir / "logs" / "launcher.log").read_text(errors="replace")
                 if (run_dir / "logs" / "launcher.log").exists() else ""):
        for line in text.splitlines():  # the CLI's (CPHASE) and torchrun's (TPHASE), likewise
            if line.startswith(("CPHASE ", "TPHASE ")):
                phases[line[0] + ":" + line.split()[1]] = round(float(line.split()[2]) - t0_wall, 3)
    if phases:
        out["phases"] = dict(sorted(phases.items(), key=lambda kv: kv[1]))
    if proc.returncode != 0:
        out["stderr"] = stderr[-2000:]
    return out


SEGMENTS = [  # (name, from event, to event): consecutive, so they add up to the wall time
    ("CLI: interpreter, imports, config (since prestart: the values given)", None, "agent"),
    ("agent and torchrun start (since prestart: torchrun start)", "agent", "forkserver"),
    ("forkserver imports, rendezvous, fork", "forkserver", "first_rank"),
    ("rank: process group, model, calibration, loaders", "first_rank", "heartbeat0"),
    ("first step", "heartbeat0", "first_step"),
    ("steps 2..n", "first_step", "last_step"),
    ("end of epoch: validation, checkpoint", "last_step", "checkpoint"),
    ("result.json", "checkpoint", "result"),
    ("ranks end", "result", "ranks_gone"),
    ("torchrun ends", "ranks_gone", "torchrun_gone"),
    ("CLI sees it, exits", "torchrun_gone", "wall_s"),
]


def summarize(path: str) -> None:
    """The median of each segment over the runs of each label in PATH (this script's output)."""
    import statistics

    rows = {}
    for line in open(path):
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("exit") == 0 and row.get("progress_s"):
                row["first_step"], row["last_step"] = row["progress_s"][0], row["progress_s"][-1]
                rows.setdefault(row["label"], []).append(row)
    labels = list(rows)
    print("| segment | " + " | ".join(f"{label} (n={len(rows[label])})" for label in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, start, end in SEGMENTS:
        cells = []
        for label in labels:
            spans = [r[end] - (r[start] if start else 0.0) for r in rows[label] if end in r and (not start or start in r)]
            cells.append(f"{statistics.median(spans):.2f}" if spans else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for key, title in (("wall_s", "**wall**"), ("fixed_s", "**fixed cost** (wall − steps × median step)")):
        cells = [f"**{statistics.median(r[key] for r in rows[label]):.2f}** "
                 f"({', '.join(f'{r[key]:.1f}' for r in rows[label])})" for label in labels]
        print(f"| {title} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--summarize"]:
        summarize(argv[1])
        return 0
    split = argv.index("--")
    tree, label, rest = Path(argv[0]).resolve(), argv[1], argv[2:split]
    repeats = int(rest[rest.index("--repeats") + 1]) if "--repeats" in rest else 1
    with tempfile.TemporaryDirectory(prefix="labkit-startup-") as results:
        for i in range(repeats):
            name = f"startup-{label}-{os.getpid()}-{i}"
            load = os.getloadavg()[0]  # before the run: what else the machine was doing
            row = watch(tree, argv[split + 1:], name, Path(results))
            print(json.dumps({"label": label, "load1_before": round(load, 2), **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
