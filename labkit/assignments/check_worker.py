"""One rank of the instant check, run under torchrun by check.py:
`python -m labkit.assignments.check_worker job.json`.

The idea: every rank builds a small float64 model twice, from a seed of its own (rank
r draws other random numbers than rank 0, as nothing in a real job promises otherwise).
One copy is wrapped in PyTorch's DDP (on a process group of its own, so a student's
stray collective cannot pair with DDP's), whose constructor broadcasts rank 0's state;
the other goes to the student's strategy, after rank 0's state is broadcast (as the loop does) before prepare.
After prepare this rank checks it holds rank 0's parameters (a method that relies on
equal seeds fails here, and is told so).
Both see the same per-rank batch every step; after each step this rank compares the
two copies parameter by parameter (a sharded method's gathered whole inside its own
`whole_model`), and on step 1 also with each rank's own, unreduced, gradient. Everything it learns goes, line by line, into
check-RANK.jsonl, flushed at once: the checker reads it even after a deadlock.

A deadlock is the checker's to detect (no line from any rank for a while): it then
sends SIGUSR1, and faulthandler writes where this rank's Python is waiting to
stack-RANK.txt. If the checker itself is gone, a thread watching its pid ends the
rank, and a last-resort faulthandler timer does so even if that thread cannot run.
"""

import contextlib
import copy
import faulthandler
import json
import os
import signal
import sys
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from labkit.config import RunConfig
from labkit.strategies.base import start_from_rank0
from labkit.training.comm_record import CommRecord, step_counts

# Small BatchNorm-free MLPs: layer widths. The check's own "mlp" has 517 parameters (6 tensors), which
# 2, 3 and 4 do not divide: uneven ring chunks and a padded shard are part of every visible check.
# The hidden cases add others of the same kinds: "odd" (58: 3 and 4 do not divide it), "deep" (10 tensors).
# "short": one bias-free layer of 2 values, a buffer shorter than 3 or more ranks: some chunks are empty.
MODELS = {"mlp": [9, 16, 16, 5], "odd": [7, 5, 3], "deep": [9, 8, 8, 8, 8, 5], "short": [1, 2]}
NO_BIAS = {"short"}
BATCH = 4  # samples per rank per step


def build(widths, bias=True):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [torch.nn.Linear(a, b, bias=bias)] + ([torch.nn.Tanh()] if i < len(widths) - 2 else [])
    return torch.nn.Sequential(*layers).double()


def batch(seed, step, rank, widths):
    g = torch.Generator().manual_seed(seed * 100_003 + step * 1_009 + rank)
    return torch.randn(BATCH, widths[0], generator=g, dtype=torch.float64), torch.randint(0, widths[-1], (BATCH,), generator=g)


def load_class(spec: str):
    """'path/file.py:Class' or a registry name → the class (the lab's own loader)."""
    from labkit.strategies import load_strategy

    return load_strategy(spec)


def parameters(model, strategy=None):
    """By name, copies, taken inside the method's `whole_model`: a method that keeps only shards in
    the model (exercise 7) gathers them there (a collective: every rank calls it)."""
    with strategy.whole_model(model) if strategy is not None else contextlib.nullcontext(model) as whole:
        return {name: p.detach().clone() for name, p in getattr(whole, "module", whole).named_parameters()}


def held_bytes(model) -> int:
    """Bytes the model's parameters and gradients hold now (each storage once): a sharded
    method frees its layers' full copies between uses."""
    tensors = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def record_point_to_point(say):
    """Log every send and receive the strategy posts (peer and number of values) before it runs:
    the k-th send from a to b pairs with b's k-th receive from a, so the checker can say which
    two sides of an exchange disagreed on the size, where gloo says only `op.preamble.length <=
    op.nbytes` or another rank's `Connection reset by peer`. The wrappers replace the functions
    in torch.distributed and in distributed_c10d both: P2POp accepts only the latter's isend and
    irecv, and batch_isend_irecv calls them through P2POp."""
    import torch.distributed.distributed_c10d as c10d

    def wrap(name, kind):
        original = getattr(c10d, name)

        def posted(tensor, *args, **kwargs):
            peer = kwargs.get("dst", kwargs.get("src", kwargs.get("group_dst", kwargs.get("group_src",
                                                                                    args[0] if args else None))))
            say(event="p2p", kind=kind, peer=peer, values=tensor.numel(), call=name)
            return original(tensor, *args, **kwargs)

        for module in (dist, c10d):
            setattr(module, name, posted)

    for name, kind in (("isend", "send"), ("send", "send"), ("irecv", "recv"), ("recv", "recv")):
        wrap(name, kind)


def watch_layers(model, running):
    """Forward pre-hooks, registered after the strategy's own (so they run after its gather):
    at the start of each layer's forward in a training step, which layers whose forward already
    ran in this step still hold their full parameters' storage. A sharded method (ZeRO-3) frees
    a layer after its own forward, so none should. (A layer still whole from the previous
    step's backward is the between-steps weighing's to report.) Returns the record, reset by
    the caller each step."""
    layers = [(name, m) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    record = {"peak_bytes": 0, "at": None, "alive": [], "started": []}

    def held(module):
        return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                    for p in module.parameters(recurse=False)}.values())

    def before(index):
        if running[0] != "forward/backward" or not torch.is_grad_enabled():
            return
        alive = [layers[j][0] for j in record["started"] if j != index and held(layers[j][1]) > 0]
        record["started"].append(index)
        total = sum(held(layers[j][1]) for j in set(record["started"]))
        if alive and (not record["alive"] or total > record["peak_bytes"]):
            record.update(peak_bytes=total, at=layers[index][0], alive=alive)

    for index, (_, module) in enumerate(layers):
        module.register_forward_pre_hook(lambda module, args, i=index: before(i))
    return record


def ring_chunks_right(model, reference_grads, world) -> list[list[bool]] | None:
    """After sync_gradients: for each of this rank's n gradient chunks (tensor_split, as the ring
    cuts it) i, which of DDP's averaged chunks j it equals (right[i][j]; i == j: right and in
    place; i != j: a right sum in the wrong chunk). None when the model's gradients are not all
    there (a sharded method keeps them elsewhere)."""
    grads = [p.grad for p in model.parameters()]
    if any(g is None for g in grads) or len(grads) != len(reference_grads):
        return None
    mine = torch.cat([g.detach().reshape(-1) for g in grads])
    ref = torch.cat([g.reshape(-1) for g in reference_grads])
    if mine.shape != ref.shape:
        return None
    return [[bool(a.shape == b.shape and (a.numel() == 0 or (a - b).abs().max() <= 1e-9)) for b in ref.tensor_split(world)]
            for a in mine.tensor_split(world)]


def local_gradients(model, x, y, group):
    """Every rank's own gradient of its batch at the start, by name, stacked by rank: what a
    first update made from a gradient left local (never reduced) would follow."""
    F.cross_entropy(model(x), y).backward()
    local = {}
    for name, p in model.named_parameters():
        everyone = [torch.empty_like(p.grad) for _ in range(dist.get_world_size(group))]
        dist.all_gather(everyone, p.grad, group=group)
        local[name] = torch.stack(everyone)
    return local


def main(job_path):
    job = json.loads(Path(job_path).read_text())
    out, rank, world = Path(job["out"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    log = open(out / f"check-{rank}.jsonl", "a", buffering=1)

    def say(**record):
        log.write(json.dumps(record) + "\n")

    stack = open(out / f"stack-{rank}.txt", "w")
    faulthandler.register(signal.SIGUSR1, file=stack, all_threads=False)
    faulthandler.dump_traceback_later(job["timeout_s"] * 6 + 60, exit=True, file=stack)  # the checker is gone
    say(event="start", pid=os.getpid())
    show = warnings.showwarning

    def deprecated(message, category, filename, lineno, file=None, line=None):  # torch's old names, said once
        if issubclass(category, (FutureWarning, DeprecationWarning)) and "distributed" in f"{filename} {message}":
            say(event="warning", message=str(message).splitlines()[0])
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = deprecated
    watch_parent(job["checker_pid"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=job["timeout_s"] * 6 + 60))
    reference_group = dist.new_group(backend="gloo")

    widths = MODELS[job["model"]]
    torch.manual_seed(job["seed"] + 7919 * rank)  # every rank its own initial weights
    reference = build(widths, bias=job["model"] not in NO_BIAS)
    mine = copy.deepcopy(reference)
    ddp = torch.nn.parallel.DistributedDataParallel(reference, process_group=reference_group)  # → rank 0's state
    initial = {k: v.detach().clone() for k, v in reference.named_parameters()}
    local = local_gradients(copy.deepcopy(reference), *batch(job["seed"], 1, rank, widths), reference_group)
    ref_optimizer = torch.optim.SGD(ddp.parameters(), lr=job["lr"], momentum=0.9)
    from labkit.strategies.buckets import make_buckets

    where = "loading your file"
    try:
        cls = load_class(job["strategy"])
        declared = {o.name for o in cls.about.options}  # pass only the options the class declares
        options = {k: v for k, v in job["options"].items() if k in declared}
        cfg = RunConfig(strategy=job["strategy"], profile="cpu", nproc=world, options=options, dtype="float64")
        strategy = cls(cfg, rank, world)
        bucket_mb = options.get("bucket_mb", job["options"].get("bucket_mb", 25.0))
        say(event="meta", sizes=[p.numel() for p in mine.parameters()], element_size=8,
            names=[n for n, _ in mine.named_parameters()], buckets=len(make_buckets(mine.parameters(), bucket_mb)))
        my_optimizer = torch.optim.SGD(mine.parameters(), lr=job["lr"], momentum=0.9)
        where = "prepare"
        with CommRecord() as setup:  # rank 0's state to every rank, and what prepare sent: not a step
            start_from_rank0(mine, world)  # as the lab's loop does before prepare
            mine = strategy.prepare(mine, my_optimizer)
        running = [None]  # which part of the step runs now, for the layer watcher
        forward = watch_layers(mine, running)
        record_point_to_point(say)  # after the initial broadcast and DDP's setup: the strategy's own messages
        say(event="start_state", **compare(parameters(ddp), parameters(mine, strategy), initial, 0),
            setup=step_counts(setup.ops))
        servers = cls.about.of(cfg).servers
        if servers:
            raise ValueError(f"About(servers={servers}): the check needs every rank to train on its own shard")
        for step in range(1, job["steps"] + 1):
            x, y = batch(job["seed"], step, rank, widths)
            where = f"step {step}, the reference DDP step"
            say(event="phase", step=step, phase="reference")
            F.cross_entropy(ddp(x), y).backward()
            reference_grads = [p.grad.detach().clone() for p in ddp.parameters()]
            ref_optimizer.step()
            ref_optimizer.zero_grad(set_to_none=True)
            record = CommRecord().__enter__()  # counted as the lab's loop counts: what torch ran
            where = f"step {step}, forward/backward"  # your hooks run here
            say(event="phase", step=step, phase="forward/backward")
            running[0] = "forward/backward"
            forward.update(peak_bytes=0, at=None, alive=[], started=[])
            F.cross_entropy(mine(x), y).backward()
            running[0] = None
            chunks = None
            for phase, call in (("sync_gradients", lambda: strategy.sync_gradients(mine)),
                                ("update", lambda: strategy.update(my_optimizer, None)),
                                ("sync_parameters", lambda: strategy.sync_parameters(mine))):
                where = f"step {step}, {phase}"
                say(event="phase", step=step, phase=phase)
                call()
                if phase == "sync_gradients" and step == 1:
                    chunks = ring_chunks_right(mine, reference_grads, world)
            record.__exit__(None, None, None)
            counts, held = step_counts(record.ops), held_bytes(mine)  # before a gather for the comparison
            my_optimizer.zero_grad(set_to_none=True)
            where = f"step {step}, gathering your full parameters to compare them"
            say(event="step", step=step, **compare(parameters(ddp), parameters(mine, strategy), initial, step,
                                                   local, job["lr"]), held_bytes=held,
                forward={k: forward[k] for k in ("peak_bytes", "at", "alive")},
                chunks_right=chunks, **counts)
    except Exception as error:  # shown to the student with the lines of their own file
        frames = [dict(file=f.filename, line=f.lineno, function=f.name, code=f.line)
                  for f in traceback.extract_tb(error.__traceback__)]
        if isinstance(error, SyntaxError) and error.filename:
            frames.append(dict(file=error.filename, line=error.lineno, function="<module>", code=(error.text or "").strip()))
        say(event="error", time=time.time(), where=where, type=type(error).__name__, message=str(error), frames=frames)
        log.close()
        os._exit(1)  # torchrun stops the other ranks
    say(event="done")
    faulthandler.cancel_dump_traceback_later()
    dist.destroy_process_group()


def watch_parent(pid: int) -> None:
    """End this rank when the checker is gone (its kernel killed, say): nothing is left behind."""
    import threading

    import psutil

    def loop():
        while psutil.pid_exists(pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=loop, daemon=True).start()


def compare(ref, mine, initial, step, local=None, lr=None):
    """Largest difference and its layer; on step 1 also how big the student's update is
    next to DDP's (n× means summed, not averaged), and how many of the values that differ
    from DDP moved by one rank's own gradient (× 1 or ÷ n: a gradient left local)."""
    worst, layer, ref_move, my_move, differ, follow_local = 0.0, None, 0.0, 0.0, 0, 0
    for name, p in ref.items():
        q = mine.get(name)
        if q is None or q.shape != p.shape:
            return dict(max_diff=float("inf"), layer=name, ratio=None)
        diff = (p.detach() - q.detach()).abs().max().item()
        if diff != diff or diff > worst:  # NaN counts as the worst
            worst, layer = (float("inf") if diff != diff else diff), name
        ref_move += (p.detach() - initial[name]).pow(2).sum().item()
        my_move += (q.detach() - initial[name]).pow(2).sum().item()
        if step == 1 and local is not None:  # the first SGD step (momentum or not) moves by −lr·gradient
            wrong = (p.detach() - q.detach()).abs() > 1e-9
            move, n = q.detach() - initial[name], len(local[name])
            own = torch.stack([(move + lr * scale * local[name]).abs() < 1e-12 for scale in (1, 1 / n)]).any(0).any(0)
            differ, follow_local = differ + int(wrong.sum()), follow_local + int((wrong & own).sum())
    ratio = (my_move / ref_move) ** 0.5 if step == 1 and ref_move > 0 else None
    return dict(max_diff=worst, layer=layer, ratio=ratio, differ=differ, follow_local=follow_local)


if __name__ == "__main__":
    main(sys.argv[1])
