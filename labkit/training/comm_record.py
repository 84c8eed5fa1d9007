"""What a step sent, counted from what torch ran: every torch.distributed call made inside a
block, and the bytes each one puts on the wire by the algorithm the backend really runs.

Every collective and point-to-point call reaches a ProcessGroup, which calls the hooks
registered on it (`ProcessGroup.register_pre_hook`) as the call is issued, with its tensors,
its root or peer and the name of the operation — whoever made the call:

- a method's own `dist.*` calls, subgroups included (each group is hooked as it appears), and
  batch_isend_irecv's sends and receives (on gloo they run as plain sends and receives);
- DDP's C++ reducer: its bucket all-reduces go through `ProcessGroup::allreduce`, hooks and all;
- a DDP comm hook's all-reduces, even those issued from callbacks on gloo's own threads
  (PowerSGD's P and Q): the hook is the process group's, not the thread's;
- FSDP2's all-gathers and reduce-scatters (dist.all_gather_into_tensor / reduce_scatter_tensor).

It does not see traffic that is no collective: the TCP store (rendezvous, barriers of the
launcher) and gloo's own connection set-up. Those are small and not per step.

Why hooks and not a TorchDispatchMode (which sees the same c10d ops): a dispatch mode is called
in Python for every aten op of forward and backward too — measured +37 % on a simple_cnn step
(docs/BENCHMARKS.md) — where a hook costs microseconds per collective and nothing per op.

The loop keeps one entered around every step (training/recorder.py) and writes `step_counts`
into the step record: no method counts what it sends. tests/test_counted_carried.py holds the
counts to what crossed an emulated link.

`bytes_sent(op, backend)` turns one recorded op into the bytes this rank sends, in one place
(docs/EXPERIMENT_GUIDE.md, "Counted from what torch ran", gives both backends' models and
their sources). S is the collective's buffer: an all-reduce's tensor, a reduce-scatter's
input, an all-gather's output; n the group's size.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import torch.distributed as dist
from torch.distributed.distributed_c10d import batch_isend_irecv

BATCH_CODE = batch_isend_irecv.__code__
HOOK_ID = 1  # on each process group (collective_log.py's hook is 0)

# torch's name for the operation → (the collective it is, where S is: the call's inputs or outputs)
HOOK_OPS = {
    "ALLREDUCE": ("all_reduce", "input_tensors"),
    "REDUCE_SCATTER": ("reduce_scatter", "input_tensors"),
    "ALLGATHER": ("all_gather", "output_tensors"),
    "BROADCAST": ("broadcast", "input_tensors"),
    "REDUCE": ("reduce", "input_tensors"),
    "SEND": ("send", "input_tensors"),
    "RECV": ("recv", "output_tensors"),
    "GATHER": ("gather", "input_tensors"),
    "SCATTER": ("scatter", "output_tensors"),
    "ALLTOALL": ("all_to_all", "input_tensors"),
    "BARRIER": ("barrier", None),
}


@dataclass
class Op:
    """One collective or point-to-point call as torch ran it."""

    op: str  # all_reduce, reduce_scatter, all_gather, broadcast, reduce, send, recv, ...
    c10d: str  # torch's name for it, e.g. "REDUCE_SCATTER"
    nbytes: int  # S: the buffer the collective is about (numel × element_size)
    dtype: str
    shapes: list  # the shapes of the tensors that make S
    group_size: int  # n
    group_rank: int  # this rank's place in the group
    root: int | None = None  # broadcast/reduce/gather/scatter: the root; send/recv: the peer (group ranks)
    batch: int | None = None  # send/recv: the batch_isend_irecv call that posted it (None: on its own)


def process_groups() -> list:
    """Every process group of this process: the world and each subgroup made since. torch keeps
    them in its private registry (distributed_c10d._world.pg_map); this is the one place that
    reads it (tests/test_torch_internals.py fails loudly when torch moves it)."""
    from torch.distributed import distributed_c10d

    return list(distributed_c10d._world.pg_map)


_ACTIVE: list["CommRecord"] = []  # the records entered now, on any thread
_HOOKED: list = []  # the groups our hook is on (held: an id could be reused by a later group)


def _hook_every_group() -> None:
    for group in process_groups():
        if not any(group is hooked for hooked in _HOOKED):
            group.register_pre_hook(HOOK_ID, lambda args, n=group.size(), r=group.rank(): _issued(args, n, r))
            _HOOKED.append(group)


def _issued(args, n: int, r: int) -> None:
    """The pre-hook: the process group is issuing a call (it has not run yet)."""
    if not _ACTIVE or args.name.name not in HOOK_OPS:
        return
    op, holder = HOOK_OPS[args.name.name]
    tensors = list(getattr(args, holder)) if holder else []
    record = Op(op=op, c10d=args.name.name, nbytes=sum(t.numel() * t.element_size() for t in tensors),
                dtype=str(tensors[0].dtype).removeprefix("torch.") if tensors else "",
                shapes=[list(t.shape) for t in tensors], group_size=n, group_rank=r,
                root=args.root if args.root >= 0 else None)
    if op in ("send", "recv"):
        record.batch = _batch_of(sys._getframe(1))
    for active in _ACTIVE:
        active.ops.append(record)


_batch = {"frame": None, "count": 0}  # the batch_isend_irecv call seen last


def _batch_of(frame) -> int | None:
    """Which batch_isend_irecv call posted this send or receive (its messages go together),
    from the Python frames above it; None when it was posted on its own."""
    for _ in range(16):
        if frame is None:
            return None
        if frame.f_code is BATCH_CODE:
            if frame is not _batch["frame"]:  # a reference held: the same object is the same call
                _batch["frame"], _batch["count"] = frame, _batch["count"] + 1
            return _batch["count"]
        frame = frame.f_back
    return None


class CommRecord:
    """`with CommRecord() as record:` … `record.ops`: every call the process groups issued while
    it was entered (DDP's reducer and comm hooks included). `take()` returns the ops so far and
    starts a new list (one list per step). Enter it again after a subgroup is made: entering
    hooks every group there is."""

    def __init__(self):
        self.ops: list[Op] = []

    def __enter__(self) -> "CommRecord":
        if dist.is_initialized():
            _hook_every_group()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def take(self) -> list[Op]:
        ops, self.ops, _batch["frame"] = self.ops, [], None
        return ops


# -- the bytes each op sends, by the algorithm the backend runs ---------------------------

def _tree_children(n: int, vrank: int) -> int:
    """How many peers `vrank` (the root is 0) sends to in gloo's binomial-tree broadcast
    (gloo/broadcast.cc): in step i the ranks whose bits above i are clear pair up across bit i."""
    children, dim = 0, max(n - 1, 0).bit_length()
    mask = (1 << dim) - 1
    for i in range(dim):
        mask ^= 1 << i
        if vrank & mask == 0 and vrank & (1 << i) == 0 and (vrank ^ (1 << i)) < n:
            children += 1
    return children


def bytes_sent(op: Op, backend: str = "gloo") -> float:
    """The bytes this rank sends for one recorded op, on `backend` ("gloo", or "nccl": its ring,
    what it runs for large messages). A group of one sends nothing."""
    n, r, s = op.group_size, op.group_rank, op.nbytes
    if op.op == "send":
        return s
    if n <= 1 or op.op in ("recv", "barrier"):
        return 0
    half = (n - 1) / n * s  # one ring pass: each rank sends n−1 of the n chunks
    nccl = backend == "nccl"
    if op.op == "all_reduce":
        return 2 * half  # ring reduce-scatter then ring all-gather (gloo: allreduce.cc, ring)
    if op.op == "reduce_scatter":
        # NCCL: one ring pass. gloo: ProcessGroupGloo all-reduces the whole input, then keeps its chunk
        return half if nccl else 2 * half
    if op.op == "all_gather":
        return half  # a ring on both (gloo: allgather.cc)
    if op.op == "broadcast":
        if nccl:  # a chain from the root: every rank but the chain's last forwards S
            return 0 if (r - op.root) % n == n - 1 else s
        return _tree_children(n, (r - op.root) % n) * s  # gloo: binomial tree
    if op.op == "reduce":
        if nccl:  # a chain ending at the root: every rank but the root sends S
            return 0 if r == op.root else s
        # gloo (reduce.cc): a ring reduce-scatter, then each non-root sends its reduced chunk to the root
        return half + (0 if r == op.root else s / n)
    if op.op == "gather":
        return 0 if r == op.root else s  # gloo: every rank straight to the root
    if op.op == "scatter":
        return (n - 1) * s if r == op.root else 0
    if op.op == "all_to_all":
        return half
    raise ValueError(f"bytes_sent: no byte model for '{op.op}' ({op.c10d}); add one to labkit/training/comm_record.py")


def bytes_received(op: Op, backend: str = "gloo") -> float:
    """The bytes this rank receives for one recorded op (the mirror of bytes_sent)."""
    n, r, s = op.group_size, op.group_rank, op.nbytes
    if op.op == "recv":
        return s
    if n <= 1 or op.op in ("send", "barrier"):
        return 0
    half = (n - 1) / n * s
    if op.op == "broadcast":
        return 0 if r == op.root else s  # every rank but the root receives S once
    if op.op == "reduce":
        if backend == "nccl":
            return 0 if (r - op.root) % n == 1 else s  # the chain's first rank receives nothing
        return half + ((n - 1) * s / n if r == op.root else 0)
    if op.op == "gather":
        return (n - 1) * s if r == op.root else 0
    if op.op == "scatter":
        return 0 if r == op.root else s
    return bytes_sent(op, backend)  # the rings and all-to-all: as much in as out


# The names the cost model fits (labkit bench collectives): a send or a receive is "send_recv"
COST_MODEL_OP = {"send": "send_recv", "recv": "send_recv"}


def step_counts(ops: list[Op], backend: str = "gloo") -> dict:
    """One step's counts as result.json keeps them: bytes_sent, bytes_received, collectives and
    ops ({operation: [calls, message bytes]}, the cost model's input). A collective is one call.
    Point-to-point: a send or a receive is one message, but those posted together by one
    `batch_isend_irecv` run at once (a link carries both ways), so a batch counts its more
    numerous side — the ring's exchange of a chunk each way is one message, a server's
    receive and its send are two."""
    counts = {"bytes_sent": 0, "bytes_received": 0, "collectives": 0, "ops": {}}
    for op in ops:
        counts["bytes_sent"] += int(bytes_sent(op, backend))  # whole bytes per call
        counts["bytes_received"] += int(bytes_received(op, backend))
    p2p = {}
    for op in ops:
        if op.op == "barrier":
            continue
        if op.op in COST_MODEL_OP:
            key = ("batch", op.batch) if op.batch is not None else ("alone", len(p2p))
            sends, recvs = p2p.setdefault(key, ([0, 0], [0, 0]))
            side = sends if op.op == "send" else recvs
            side[0] += 1
            side[1] += op.nbytes
            continue
        calls, size = counts["ops"].get(op.op, (0, 0))
        counts["ops"][op.op] = [calls + 1, size + op.nbytes]
        counts["collectives"] += 1
    for sends, recvs in p2p.values():
        calls, size = counts["ops"].get("send_recv", (0, 0))
        more = max(sends, recvs)
        counts["ops"]["send_recv"] = [calls + more[0], size + more[1]]
        counts["collectives"] += more[0]
    return counts


def step_summary(ops: list[Op], backend: str = "gloo") -> dict:
    """One step's record: bytes sent by the backend's model, and each op as torch ran it."""
    return {"bytes_sent": sum(bytes_sent(op, backend) for op in ops), "ops": [asdict(op) for op in ops]}
