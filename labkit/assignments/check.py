"""The instant check: run a student's strategy under real torchrun against DDP and say,
in plain words, what happened.

    report = labkit.check("my_ring.py:MyRing", method="ring")   # or: labkit check-strategy my_ring.py:MyRing
    assert report.ok, report

One torchrun job per world size (2, 3 and 4 gloo ranks on the CPU) runs
check_worker.py: a small float64 model trained a few steps by DDP and by the student's
strategy side by side, every rank seeded differently (so a method must start from rank
0's state, as the contract's broadcast makes it, and never rely on equal seeds). This process watches the ranks' report files and reports
the first thing wrong: a rank that did not start from rank 0's state, an exception (with the student's own line), a deadlock (no
rank moved for `timeout_s`: each rank dumps its stack, we name the rank and the call
it waits in), parameters that differ from DDP's (how much, which layer, after which
step), or bytes and collectives that differ from the analytic counts of `method` (for
fsdp also a model that still holds its full layers between steps).
Every process is stopped and reaped whatever the outcome.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TOLERANCE = 1e-9  # float64: exact methods agree with DDP to ~1e-15
STARTUP_S = 180.0  # importing torch on a busy 2-core machine can be slow
METHODS = ("allreduce", "bucketed", "overlap", "ring", "ps", "ps_sharded", "fsdp")
SPLITS = ("ring", "ps_sharded", "fsdp")  # methods that cut a buffer in n: a buffer shorter than n is a case of its own
SHORT_VALUES = 2  # the "short" model's values (check_worker.MODELS): 4 ranks get two empty chunks side by side


@dataclass
class WorldOutcome:
    world: int
    ok: bool
    message: str
    seconds: float
    counts: dict = field(default_factory=dict)  # rank → {bytes_sent, bytes_received, collectives} of the last step
    setup: dict = field(default_factory=dict)  # rank → what the initial broadcast of rank 0's state sent (not a step)
    ops: dict = field(default_factory=dict)  # rank → each step's {operation: [calls, message bytes]}, as the loop counts


@dataclass
class CheckReport:
    spec: str
    outcomes: list[WorldOutcome]

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes)

    def frame(self):
        """One row per world size and rank: what the loop counted of the strategy's last step."""
        import pandas as pd

        # check_s: the whole check at this world size (torchrun's start, every step, the comparisons),
        # not a step's time; object columns keep counts printed as integers (9, not 9.0)
        return pd.DataFrame([dict(world=o.world, rank=rank, **{k: whole(v) for k, v in counts.items()},
                                  check_s=round(o.seconds, 1))
                             for o in self.outcomes for rank, counts in o.counts.items()], dtype=object)

    def figure(self, key: str, world: int, rank: int = 0):
        """What `rank` counted (`key`: bytes_sent, bytes_received or collectives) in its last step
        on `world` ranks; None when the check did not run (or reach) that world size."""
        outcome = next((o for o in self.outcomes if o.world == world), None)
        return outcome.counts.get(rank, {}).get(key) if outcome else None

    def __str__(self) -> str:
        name = Path(self.spec.rsplit(":", 1)[0]).name + ":" + self.spec.rsplit(":", 1)[1] if ":" in self.spec else self.spec
        head = f"{name}: " + ("all checks passed" if self.ok else "FAILED")
        return "\n".join([head] + [("✓ " if o.ok else "✗ ") + o.message for o in self.outcomes])

    __repr__ = __str__


def check(spec: str, method: str | None = None, worlds=(2, 3, 4), model: str = "mlp", steps: int = 3,
          options: dict | None = None, timeout_s: float = 10.0, seed: int = 0, verbose: bool = True,
          short: bool | None = None) -> CheckReport:
    """Check the strategy `spec` ("file.py:Class", or a registry name) on each world size in
    turn, stopping at the first that fails. `method` names the analytic byte and
    collective counts to hold it to (one of METHODS; None: counts are only shown).
    `short` (default: for the methods that split a buffer, SPLITS) adds one run of a model of
    2 values on max(4, largest world) ranks, where some chunks and shards are empty.
    `options`: RunConfig fields the strategy reads (e.g. bucket_mb). `timeout_s`: how
    long no rank may make progress before the run is called a deadlock."""
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    spec = resolve(spec)
    options = {"bucket_mb": 0.001, **(options or {})}
    outcomes = []
    problem = syntax_problem(spec) or import_problem(spec)
    if problem:  # no need to start torchrun to find this
        outcomes.append(WorldOutcome(worlds[0], False, problem, 0.0))
        if verbose:
            print("✗ " + outcomes[0].message, flush=True)
        return CheckReport(spec, outcomes)
    for world in worlds:
        outcome = run_world(spec, world, method, model, steps, options, timeout_s, seed)
        outcomes.append(outcome)
        if verbose:
            print(("✓ " if outcome.ok else "✗ ") + outcome.message + f"  [{outcome.seconds:.1f} s]", flush=True)
        if not outcome.ok:
            break
    if (method in SPLITS if short is None else short) and all(o.ok for o in outcomes):
        world = max(4, *worlds)  # two empty chunks next to each other: a rank with both sides empty
        outcome = run_world(spec, world, method, "short", steps, options, timeout_s, seed)
        outcome.message = outcome.message.replace(f"{world} ranks: ", f"{world} ranks, a buffer of {SHORT_VALUES} "
                                                  f"values (shorter than the world size: empty chunks): ", 1)
        outcome.counts = {}  # the table shows the 517-value model's counts only
        outcomes.append(outcome)
        if verbose:
            print(("✓ " if outcome.ok else "✗ ") + outcome.message + f"  [{outcome.seconds:.1f} s]", flush=True)
    return CheckReport(spec, outcomes)


def import_problem(spec: str) -> str | None:
    """A file that hangs, exits or fails when imported, in one line (labkit.strategies.check_import)."""
    from labkit.errors import ConfigError
    from labkit.strategies import check_import

    try:
        check_import(spec)
    except ConfigError as error:
        return str(error)
    return None


def side_by_side(report: CheckReport, predicted: dict, measured: dict):
    """A student's predictions beside the figures the check measured: `measured` maps each
    prediction's name to (key, world, rank) in the report (see CheckReport.figure)."""
    import pandas as pd

    rows = []
    for name, (key, world, rank) in measured.items():
        value, guess = report.figure(key, world, rank), predicted.get(name)
        verdict = ("not measured: the check did not run on {} ranks".format(world) if value is None else
                   "no prediction written" if guess is None else
                   "as predicted" if abs(float(guess) - value) <= max(1.0, 0.01 * abs(value)) else "differs: why?")
        rows.append(dict(prediction=name, predicted=guess, measured=value, what=f"{key}, rank {rank} of {world}",
                         verdict=verdict))
    for name in sorted(set(predicted) - set(measured)):  # a prediction the check cannot measure: answer it in words
        rows.append(dict(prediction=name, predicted=predicted[name], measured=None, what="not counted by the check",
                         verdict="say in your answers whether it held"))
    for row in rows:
        row["predicted"], row["measured"] = whole(row["predicted"]), whole(row["measured"])
    return pd.DataFrame(rows, dtype=object).set_index("prediction")  # object: 6216, not 6216.0


def whole(value):
    """A count as an integer where it is one (6216, not 6216.0)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def resolve(spec: str) -> str:
    if ":" not in spec:
        return spec
    path, name = spec.rsplit(":", 1)
    file = Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"{path} not found (from {Path.cwd()}); did its %%writefile cell run?")
    return f"{file}:{name}"


def syntax_problem(spec: str) -> str | None:
    """What is wrong with the file before any rank starts: a syntax error, or a part still
    left as the starter's `raise NotImplementedError()`."""
    if ":" not in spec:
        return None
    path = Path(spec.rsplit(":", 1)[0])
    source = path.read_text()
    try:
        compile(source, str(path), "exec")
    except SyntaxError as error:
        return f"{path.name} line {error.lineno}: SyntaxError: {error.msg}: {(error.text or '').strip()}"
    lines = source.splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("raise NotImplementedError"):
            function = next((l.split("def ", 1)[1].split("(")[0] for l in reversed(lines[:number])
                             if l.strip().startswith("def ")), "the file")
            return (f"{path.name} line {number} in {function}: NotImplementedError — the part to write is still "
                    f"the starter's `raise NotImplementedError()`; write your code there")
    return None


def run_world(spec, world, method, model, steps, options, timeout_s, seed) -> WorldOutcome:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-check-") as tmp:
        out = Path(tmp)
        job = dict(strategy=spec, model=model, steps=steps, options=options, timeout_s=timeout_s, seed=seed,
                   lr=0.1, out=str(out), checker_pid=os.getpid())
        (out / "job.json").write_text(json.dumps(job))
        from labkit.jobs.command import Command, start

        # One node, every store and socket on loopback; each rank forked from the forkserver after
        # one import of torch, and dying with its torchrun (as labkit's runs).
        handle = start(Command("labkit.assignments.check_worker", [str(out / "job.json")], nproc=world, run_dir=out,
                               run_id="labkit-check", monitor_interval_s=0.1, env={"OMP_NUM_THREADS": "1"},
                               cwd=Path(spec.rsplit(":", 1)[0]).parent if ":" in spec else None))
        try:
            stalled = watch(handle, out, world, timeout_s)
        finally:
            handle.kill()  # ended already, normally; either way nothing of it is left
            handle.close()
        returncode = handle.returncode
        events = {rank: read_events(out / f"check-{rank}.jsonl") for rank in range(world)}
        outcome = judge(spec, world, method, events, out, stalled, timeout_s, returncode)
        setup = {rank: e["setup"] for rank, evs in events.items() for e in evs if e["event"] == "start_state"}
        ops = {rank: [e["ops"] for e in evs if e["event"] == "step"] for rank, evs in events.items()}
    return WorldOutcome(world, outcome[0], outcome[1], time.perf_counter() - started, outcome[2], setup, ops)


# -- watching the ranks --------------------------------------------------------------

def watch(handle, out: Path, world: int, timeout_s: float) -> bool:
    """Wait for torchrun; True when the ranks stalled (a deadlock), after making each
    rank write its stack."""
    while handle.poll() is None:
        time.sleep(0.05)
        files = [out / f"check-{r}.jsonl" for r in range(world)]
        if not all(f.exists() for f in files):
            if time.time() - out.stat().st_mtime > STARTUP_S:
                return True
            continue
        events = [read_events(f) for f in files]
        errored = any(e["event"] == "error" for rank in events for e in rank)
        if errored or all(any(e["event"] == "done" for e in rank) for rank in events):
            try:
                handle.wait(timeout=30)  # finished, or torchrun stops the others itself
            except subprocess.TimeoutExpired:
                pass
            return False
        started = all(any(e["event"] == "meta" for e in rank) for rank in events)
        quiet = time.time() - max(f.stat().st_mtime for f in files)
        if quiet > (timeout_s if started else STARTUP_S):
            for rank in events:
                pid = next((e["pid"] for e in rank if e["event"] == "start"), None)
                if pid:
                    try:
                        os.kill(pid, signal.SIGUSR1)  # faulthandler: dump where you are
                    except ProcessLookupError:
                        pass
            time.sleep(0.5)
            return True
    return False


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the kill
            pass
    return events


# -- saying what happened ------------------------------------------------------------

def judge(spec, world, method, events, out, stalled, timeout_s, returncode):
    """(ok, one message, counts) for one world size."""
    file = spec.rsplit(":", 1)[0] if ":" in spec else None
    name = f"{world} ranks"
    errors = {rank: e for rank, evs in events.items() for e in evs if e["event"] == "error"}
    disagree = exchange_mismatch(events)  # what gloo's own error hides: which two sides disagreed, on how much
    if disagree and (errors or stalled):
        return False, f"{name}: " + disagree, {}
    if errors:
        return False, f"{name}: " + describe_error(errors, file), {}
    if stalled:
        return False, f"{name}: " + describe_deadlock(events, out, file, timeout_s, world), {}
    started = {rank: e for rank, evs in events.items() for e in evs if e["event"] == "start_state"}
    diverged = sorted((r for r, e in started.items() if e["max_diff"] > TOLERANCE), key=lambda r: -started[r]["max_diff"])
    if diverged:
        return False, f"{name}: " + describe_start(diverged, started), {}
    steps = {rank: [e for e in evs if e["event"] == "step"] for rank, evs in events.items()}
    if returncode != 0 or not all(any(e["event"] == "done" for e in evs) for evs in events.values()):
        tail = (out / "torchrun.log").read_text()[-1500:]
        return False, f"{name}: a rank ended without finishing and without a Python error (exit code {returncode}):\n{tail}", {}
    for step in range(len(steps[0])):
        rows = [(rank, steps[rank][step]) for rank in range(world)]
        rank, worst = max(rows, key=lambda r: r[1]["max_diff"])
        if worst["max_diff"] > TOLERANCE:
            return False, f"{name}: " + (disagree or describe_mismatch(worst, rank, rows, world, method)), {}
    meta = next(e for e in events[0] if e["event"] == "meta")
    counts = {rank: {k: steps[rank][-1][k] for k in ("bytes_sent", "bytes_received", "collectives")} for rank in range(world)}
    message = (f"{name}: parameters match DDP after {len(steps[0])} steps "
               f"(largest difference {max(s['max_diff'] for st in steps.values() for s in st):.1e})")
    old_names = sorted({e["message"].rstrip(".") for e in events[0] if e["event"] == "warning"})
    if old_names:  # it works, but torch will remove what it calls
        message += "; note: torch says " + " and ".join(old_names)
    if method is None:
        return True, message + "; counted per step on rank 0: " + describe_counts(counts[0]), counts
    if method == "fsdp":
        missing = forward_not_freed(steps, world, meta)
        if missing:
            return False, f"{name}: parameters match DDP, but " + missing, counts
    held = {rank: steps[rank][-1].get("held_bytes", 0) for rank in range(world)}
    if method == "fsdp" and max(held.values()) > shard_bytes(world, meta):
        rank = max(held, key=held.get)
        return False, (f"{name}: parameters match DDP, but between steps rank {rank}'s model still holds "
                       f"{held[rank]:,} B of parameters and gradients (the whole model is "
                       f"{sum(meta['sizes']) * meta['element_size']:,} B, a 1/{world} shard {shard_bytes(world, meta):,} B): "
                       f"free each layer's full parameters after its forward and its backward, and its full "
                       f"gradients once reduce-scattered"), counts
    for rank in range(world):
        expected = analytic(method, rank, world, meta)
        wrong = count_mismatch(counts[rank], expected, world, len(meta["sizes"]))
        if wrong:
            return False, f"{name}: parameters match DDP, but rank {rank} counted {wrong}", counts
    return True, message + f"; counted {describe_counts(counts[0])} per step on rank 0, as the analytic {method}", counts


def forward_not_freed(steps, world, meta) -> str | None:
    """ZeRO-3's point, measured inside the step: when a layer's forward starts, no other layer
    may still hold its full parameters (each is freed after its own forward). The check's
    hooks run after the strategy's, at the start of every layer's forward in training."""
    for rank in range(world):
        for step in steps[rank]:
            forward = step.get("forward") or {}
            if forward.get("alive"):
                layers = forward["alive"]
                whole = sum(meta["sizes"]) * meta["element_size"]
                return (f"during the forward of step {step['step']} rank {rank} held layer"
                        f"{'s' if len(layers) > 1 else ''} {', '.join(layers)} whole when layer {forward['at']}'s "
                        f"forward began ({forward['peak_bytes']:,} B of full parameters at once, where the whole "
                        f"model is {whole:,} B and one layer at a time is the aim): free each layer's full "
                        f"parameters in after_forward, once its forward is done — the free at the end of backward "
                        f"comes too late for the memory FSDP saves")
    return None


def exchange_mismatch(events) -> str | None:
    """The first exchange whose two sides posted different sizes. The k-th send from rank a to
    rank b pairs with b's k-th receive from a (gloo matches point-to-point messages in order),
    so a list per direction, compared in order, finds it — from the sizes each side posted."""
    sends, recvs, where = {}, {}, {}
    for rank, evs in events.items():
        phase = None
        for e in evs:
            if e["event"] == "phase":
                phase = f"step {e['step']}, {e['phase']}"
            elif e["event"] == "p2p" and e.get("peer") is not None:
                pair = (rank, e["peer"]) if e["kind"] == "send" else (e["peer"], rank)
                (sends if e["kind"] == "send" else recvs).setdefault(pair, []).append(e["values"])
                where.setdefault((e["kind"], pair, len((sends if e["kind"] == "send" else recvs)[pair])), phase)
    for (src, dst), sent in sorted(sends.items()):
        received = recvs.get((src, dst), [])
        for k, (a, b) in enumerate(zip(sent, received)):
            if a == b:
                continue
            phase = where.get(("recv", (src, dst), k + 1)) or where.get(("send", (src, dst), k + 1))
            text = (f"rank {dst} received {b} value{'s' * (b != 1)} where rank {src} sent {a} ({phase}, message {k + 1} from "
                    f"rank {src} to rank {dst}): the two sides of this exchange disagree on the chunk")
            if 0 in (a, b):
                empty = src if a == 0 else dst
                text += (f". Rank {empty}'s side was an empty chunk, which it posted while its neighbour posted "
                         f"nothing for it (or the other way round), so the messages that follow pair up wrongly: "
                         f"skip each empty send and each empty receive on its own, as the neighbour does")
            else:
                text += (": both must post the same chunk's index, and chunks may differ in length by one, so "
                         "an index one off shows as a size mismatch")
            return text + ". Any `Connection reset by peer` on another rank follows from this"
    return None


def describe_counts(c):
    return f"{c['bytes_sent']:,} B sent, {c['bytes_received']:,} B received, {c['collectives']} collective(s)"


def layer_sizes(meta) -> list[int]:
    """Values per layer (a module's own parameters: "0.weight" and "0.bias" are layer "0")."""
    layers = {}
    for name, size in zip(meta["names"], meta["sizes"]):
        layers[name.rsplit(".", 1)[0]] = layers.get(name.rsplit(".", 1)[0], 0) + size
    return list(layers.values())


def shard_bytes(world, meta) -> int:
    """One rank's shard of every layer, each layer padded to a multiple of `world` values."""
    return sum(math.ceil(size / world) for size in layer_sizes(meta)) * meta["element_size"]


def analytic(method, rank, world, meta) -> dict:
    """Bytes and collectives per step of `method` on `rank`, from the model's sizes: the calls
    the method should make, counted as the loop counts what a run really made (comm_record:
    gloo's algorithm for each collective; a reduce-scatter there is a whole all-reduce)."""
    from labkit.training.comm_record import Op, step_counts

    def call(op, nbytes, count=1, batch=None):
        return [Op(op=op, c10d=op, nbytes=nbytes, dtype="", shapes=[], group_size=world, group_rank=rank,
                   batch=batch)] * count

    size = sum(meta["sizes"]) * meta["element_size"]
    if method == "fsdp":  # per layer: all-gather before forward and before backward, reduce-scatter its gradients
        ops = [o for layer in layer_sizes(meta) for o in
               call("all_gather", math.ceil(layer / world) * world * meta["element_size"], count=2)
               + call("reduce_scatter", math.ceil(layer / world) * world * meta["element_size"])]
    elif method == "ps":  # the server receives every worker's gradient, then sends each the parameters
        ops = (call("recv", size, world - 1) + call("send", size, world - 1) if rank == 0
               else call("send", size) + call("recv", size))
    elif method == "ring":  # 2(n−1) exchanges of one chunk each way (one batch each); an empty chunk is not sent
        values = sum(meta["sizes"])
        chunk = [values // world + (i < values % world) for i in range(world)]  # tensor_split's lengths
        ops = []
        for step in range(world - 1):
            for exchange, (sent, got) in enumerate((((rank - step) % world, (rank - step - 1) % world),  # RS
                                                    ((rank - step + 1) % world, (rank - step) % world))):  # AG
                batch = 2 * step + exchange
                ops += call("send", chunk[sent] * meta["element_size"], int(chunk[sent] > 0), batch)
                ops += call("recv", chunk[got] * meta["element_size"], int(chunk[got] > 0), batch)
    elif method == "ps_sharded":
        ops = call("reduce_scatter", size) + call("all_gather", size)
    else:  # allreduce (one per tensor), bucketed and overlap (one per bucket)
        calls = len(meta["sizes"]) if method == "allreduce" else meta["buckets"]
        ops = call("all_reduce", size / calls, count=calls)
    counts = step_counts(ops)
    return {k: counts[k] for k in ("bytes_sent", "bytes_received", "collectives")}


def count_mismatch(counted, expected, world, tensors) -> str | None:
    # Uneven chunks, padding and per-call rounding move the figure by a few elements.
    slack = 8 * (2 * world + tensors)
    for key in ("bytes_sent", "bytes_received"):
        if abs(counted[key] - expected[key]) > slack:
            return (f"{counted[key]:,} {key.replace('_', ' ')} per step where the analytic value is "
                    f"{expected[key]:,.0f} (the loop counts every torch.distributed call your method makes): does "
                    f"each rank move each piece of data once, no more, no less?")
    if counted["collectives"] != expected["collectives"]:
        return (f"{counted['collectives']} collectives per step where the analytic value is "
                f"{expected['collectives']}: each torch.distributed call that moves data is one; a send and "
                f"a receive made together are one exchange")
    return None


def short(path, file):
    return Path(path).name if file and Path(path) == Path(file) else path


def describe_error(errors, file) -> str:
    def own(e):
        return [f for f in e["frames"] if file and Path(f["file"]) == Path(file)]
    def consequence(e):  # what a rank says when a peer died: not the cause
        return any(s in e["message"] for s in CONSEQUENCES)

    # The rank that failed first with an error of its own; the others' resets follow from it.
    rank = min(errors, key=lambda r: (consequence(errors[r]), not own(errors[r]), errors[r].get("time", 0), r))
    e = errors[rank]
    lines = [f"exception on rank {rank} in {e['where']}: {e['type']}: {e['message'].strip().splitlines()[0] if e['message'].strip() else ''}"]
    followers = sorted(r for r in errors if r != rank and consequence(errors[r]))
    if followers and not consequence(e):
        lines[0] += (f" (rank{'s' if len(followers) > 1 else ''} {', '.join(map(str, followers))} then lost "
                     f"the connection to it: a consequence, not a second error)")
    frames = own(e) or ([] if e["where"] == "loading your file" else e["frames"][-1:])
    lines += [f"    {short(f['file'], file)} line {f['line']} in {f['function']}: {f['code']}" for f in frames]
    if "for storage of size 0" in e["message"]:  # a tensor whose memory was freed (exercise 7's layers)
        lines.append("    a layer's parameters were used while freed: gather them before its forward and before its backward")
    return "\n".join(lines)


CONSEQUENCES = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket closed")
FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')


def describe_deadlock(events, out, file, timeout_s, world) -> str:
    phases = {rank: next((e for e in reversed(evs) if e["event"] == "phase"), None) for rank, evs in events.items()}
    if not any(phases.values()):
        return f"the ranks did not start within {STARTUP_S:.0f} s (is the machine very busy?)"
    lines = [f"deadlock: no rank made progress for {timeout_s:.0f} s, so the check stopped them all."]
    for rank in range(world):
        frames = [m.groupdict() for m in FRAME.finditer((out / f"stack-{rank}.txt").read_text() if (out / f"stack-{rank}.txt").exists() else "")]
        mine = next((f for f in frames if file and Path(f["file"]) == Path(file)), None)
        phase = phases[rank]
        if mine:
            code = source_line(mine["file"], int(mine["line"]))
            lines.append(f"    rank {rank} is stuck in step {phase['step']}, {mine['function']}, at "
                         f"{Path(mine['file']).name} line {mine['line']}: {code}")
        elif phase:
            where = ("the reference DDP step, waiting for ranks that never finished your step"
                     if phase["phase"] == "reference" else f"{phase['phase']}")
            lines.append(f"    rank {rank} waits in step {phase['step']}, {where}")
    return "\n".join(lines)


def source_line(path, line) -> str:
    try:
        return Path(path).read_text().splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def describe_start(diverged, started) -> str:
    worst = started[diverged[0]]
    return (f"rank{'s' if len(diverged) > 1 else ''} {', '.join(map(str, diverged))} did not start from rank 0's "
            f"state: after prepare, rank {diverged[0]}'s parameters differ from rank 0's by up to "
            f"{worst['max_diff']:.3g} (layer {worst['layer']}). The check seeds every rank differently, so a method "
            f"that relies on every rank drawing the same random numbers fails here. The loop gives every rank rank 0's "
            f"parameters and buffers before prepare (start_from_rank0): does your prepare draw new ones (re-initialize "
            f"a layer) on each rank? Build from the model it is given")


def describe_mismatch(worst, rank, rows, world, method=None) -> str:
    step = worst["step"]
    text = (f"parameters differ from DDP after step {step}: largest difference {worst['max_diff']:.3g} "
            f"in layer {worst['layer']} on rank {rank}")
    ratio = rows[0][1].get("ratio") if step == 1 else None
    if ratio is not None:
        text += f". Your first update is {ratio:.2f}× DDP's"
        if abs(ratio - world) < 0.05 * world:
            text += f" = the world size: the gradients look summed, not averaged (divide by the world size, {world})"
        elif abs(ratio * world - 1) < 0.05:
            text += f" = 1/world size: the gradients look divided by {world} twice"
        elif ratio < 1e-6:
            text += ": the parameters did not move on rank 0"
    differ, follow_local = worst.get("differ", 0), worst.get("follow_local", 0)
    if step == 1 and differ and follow_local == differ:
        text += (f". All {differ} values that differ moved by one rank's own gradient, not the average over the "
                 f"ranks: a gradient was left local (never reduced across the ranks)")
        if method == "fsdp":
            text += "; in FSDP every layer's gradients go through a reduce-scatter, summed over the ranks"
    if method == "ring" and step == 1 and not (ratio is not None and abs(ratio - world) < 0.05 * world):
        text += ring_phase(rows, world)
    same = sorted(r for r, s in rows if s["max_diff"] <= TOLERANCE)
    if same:
        text += f". Ranks {', '.join(map(str, same))} match DDP; the others do not"
    return text


def ring_phase(rows, world) -> str:
    """Which phase of a ring's step 1 is off, from what each rank's gradient chunks held right
    after sync_gradients (right[i][j]: its chunk i equals DDP's chunk j). A working reduce-scatter
    leaves every chunk's full sum on some rank, whichever chunk each finishes; the all-gather
    then copies them, each into its own place, on every rank."""
    right = {rank: step.get("chunks_right") for rank, step in rows}
    if any(v is None for v in right.values()):
        return ""
    chunks = range(world)
    in_place = {r: [right[r][c][c] for c in chunks] for r in right}
    if all(all(v) for v in in_place.values()):
        return ""
    misplaced = sorted({(r, i, j) for r in right for i in chunks for j in chunks
                        if i != j and right[r][i][j] and not right[r][i][i]})
    if misplaced:
        r, i, j = misplaced[0]
        return (f". After sync_gradients rank {r}'s chunk {i} held the right sums of chunk {j}: the sums were "
                f"right but a copy landed in the wrong chunk, so the reduce-scatter worked and the all-gather is "
                f"off (which chunk each rank receives into, and which it sends)")
    if all(any(in_place[r][c] for r in right) for c in chunks):
        return (". After sync_gradients every chunk's right sum was on some rank but not every rank held every "
                "chunk: the reduce-scatter worked, the all-gather's copies are off (which chunk each rank sends, "
                "and which it receives into)")
    return (". After sync_gradients some chunk's right sum was on no rank at all: the reduce-scatter's sums are "
            "off (which chunk each rank adds into, or what it adds)")
