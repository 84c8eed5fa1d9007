"""Each rank's recent collectives, in logs/collectives-RANK.jsonl: what the failure report reads
to say which collective each rank was in when a run hung or died (labkit.jobs.failures).

A process group calls its pre-hooks as each collective is issued on it, whoever issues it —
dist.all_reduce from a method, or DDP's C++ reducer, which no Python wrapper sees. Ours
writes one line per collective — its sequence number on the group, operation, message
bytes, dtype and the step — into a small ring of fixed-size lines (os.pwrite, a few µs;
no flush needed: the kernel has it), before the collective starts. So a rank that hangs in
it, or that gloo kills with SIGABRT a moment after a size mismatch, has already left it in
the file. The first line says how far the loop got: every collective entered before the
loop's last step boundary has finished (gloo's work marks no completion we could read).

torch's own flight recorder keeps the same record (torch 2.14: `FlightRecorderHook`, any
backend; NCCL's own with start and completion times, TORCH_FR_BUFFER_SIZE, dumped on a
timeout with TORCH_NCCL_DUMP_ON_TIMEOUT=1), but it is read by dumping the whole ring
(~8 ms for 256 entries): too dear to do per collective, and polling it misses a rank gloo
aborts within the second. This record covers the world group on every backend; a method's
own subgroups (dist.new_group) are not recorded.
"""

import json
import os

import torch.distributed as dist

OP_NAMES = {"ALLREDUCE": "all_reduce", "ALLGATHER": "all_gather", "REDUCE_SCATTER": "reduce_scatter",
            "ALLTOALL": "all_to_all"}  # torch's hook names → the names dist calls them by
KEEP = 64  # collectives kept: a few steps of a small model's sequence
LINE = 160  # bytes per line, padded: line i of the ring sits at a fixed offset


class CollectiveLog:
    def __init__(self, path, rank: int):
        self.rank, self.step, self.seq = rank, 0, 0
        self.fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        self._write(0, {"rank": rank, "step": 0, "finished_through": 0})
        if dist.is_initialized():
            dist.group.WORLD.register_pre_hook(0, self._entered)

    def _entered(self, args) -> None:
        """Called by the process group as a collective is issued, before it runs."""
        self.seq += 1
        tensors = args.input_tensors
        self._write(1 + self.seq % KEEP, {
            "seq": self.seq, "op": OP_NAMES.get(args.name.name, args.name.name.lower()), "step": self.step,
            "bytes": sum(t.numel() * t.element_size() for t in tensors),
            "dtype": str(tensors[0].dtype).removeprefix("torch.") if tensors else None})

    def step_started(self, step: int) -> None:
        """The loop got here: what was entered before has finished; what comes is `step`'s."""
        self.step = step
        self._write(0, {"rank": self.rank, "step": step, "finished_through": self.seq})

    def step_ended(self, step: int) -> None:
        self._write(0, {"rank": self.rank, "step": step, "step_done": True, "finished_through": self.seq})

    def _write(self, slot: int, record: dict) -> None:
        line = json.dumps(record)[:LINE - 1].ljust(LINE - 1) + "\n"
        os.pwrite(self.fd, line.encode(), slot * LINE)


def read_collectives(path) -> dict:
    """One rank's file: {rank, step, finished_through, collectives: [oldest … newest]}."""
    lines = []
    for line in open(path, errors="replace").read().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # never written (a hole of zeros), or cut by the kill
            lines.append(None)
    head, entries = lines[0] or {}, sorted((e for e in lines[1:] if e), key=lambda e: e["seq"])
    return {**head, "collectives": entries}
