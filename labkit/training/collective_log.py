"""Each rank's recent collectives, in logs/collectives-RANK.jsonl: what the failure report reads
to say which collective each rank was in when a run hung or died (labkit.jobs.failures).

A process group calls its pre-hooks as each collective is issued on it, whoever issues it —
dist.all_reduce from a method, or DDP's C++ reducer, which no Python wrapper sees. Ours
writes one line per collective — its sequence number on the group, operation, message
bytes, dtype and the step — into a small ring of fixed-size lines (os.pwrite, a few µs;
no flush needed: the kernel has it), before the collective starts. So a rank that hangs in
it, or that gloo kills with SIGABRT a moment after a size mismatch, has already left it in
the file. Finished is marked apart: the post-hook (fired once the collective is *issued*,
not done) keeps its work, and the rank asks each kept work `is_completed()` at its next
collective and at each step boundary, rewriting the line with "done": true when it is. (A
callback on the work's future would mark it the moment it completes, but it runs on gloo's
thread and must take the GIL first; tried, ddp on 4 ranks over 2 cores took 49 ms a step
against 44 without the record, medians of 6 + 6 runs, where looking cost nothing measurable.)
So "done" is what the rank had seen: a collective that completed after the rank's last look
stays unmarked. LABKIT_COLLECTIVE_RECORD=off in a run's environment leaves the hooks out (to
time what the record costs). The first line says how far the loop got: every collective entered
before the loop's last step boundary has finished.

torch's own flight recorder keeps the same record (torch 2.14: NCCL's own with start and
completion times, TORCH_FR_BUFFER_SIZE, dumped on a timeout with TORCH_NCCL_DUMP_ON_TIMEOUT=1;
`FlightRecorderHook` on the same pre/post hooks for any backend, but its post-hook retires an
entry when the collective is issued, so on gloo its entries are never marked started or
completed), but it is read by dumping the whole ring (~8 ms for 256 entries): too dear to do
per collective, and polling it misses a rank gloo aborts within the second. This record covers the world group on every backend; a method's
own subgroups (dist.new_group) are not recorded.
"""

import json
import os

import torch.distributed as dist

from labkit.training.comm_record import HOOK_OPS  # torch's hook names → the names dist calls them by

KEEP = 64  # collectives kept: a few steps of a small model's sequence
LINE = 160  # bytes per line, padded: line i of the ring sits at a fixed offset


class CollectiveLog:
    def __init__(self, path, rank: int):
        self.rank, self.step, self.seq = rank, 0, 0
        self.issued = {}  # op_id (pairs a pre-hook with its post-hook) → our entry
        self.pending = []  # (entry, work) issued, not yet seen completed
        self.fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        self._write(0, {"rank": rank, "step": 0, "finished_through": 0})
        if dist.is_initialized() and os.environ.get("LABKIT_COLLECTIVE_RECORD") != "off":  # off: to time its cost
            dist.group.WORLD.register_pre_hook(0, self._entered)
            dist.group.WORLD.register_post_hook(0, self._issued)

    def _entered(self, args) -> None:
        """Called by the process group as a collective is issued, before it runs."""
        if self.pending:
            self._look()
        self.seq += 1
        tensors = args.input_tensors
        entry = self.issued[args.op_id] = {
            "seq": self.seq, "op": HOOK_OPS.get(args.name.name, (args.name.name.lower(),))[0], "step": self.step,
            "bytes": sum(t.numel() * t.element_size() for t in tensors),
            "dtype": str(tensors[0].dtype).removeprefix("torch.") if tensors else None}
        self._write(1 + self.seq % KEEP, entry)

    def _issued(self, args) -> None:
        """Called once the backend has the collective (not when it is done): keep its work."""
        entry = self.issued.pop(args.op_id, None)
        if entry is not None and args.work is not None:
            self.pending.append((entry, args.work))

    def _look(self) -> None:
        """Mark done the kept collectives the backend has completed."""
        waiting = []
        for entry, work in self.pending:
            if work.is_completed():
                entry["done"] = True
                self._write(1 + entry["seq"] % KEEP, entry)
            else:
                waiting.append((entry, work))
        self.pending = waiting

    def step_started(self, step: int) -> None:
        """The loop got here: what was entered before has finished; what comes is `step`'s."""
        self._look()
        self.step = step
        self._write(0, {"rank": self.rank, "step": step, "finished_through": self.seq})

    def step_ended(self, step: int) -> None:
        self._look()
        self._write(0, {"rank": self.rank, "step": step, "step_done": True, "finished_through": self.seq})

    def _write(self, slot: int, record: dict) -> None:
        line = json.dumps(record)[:LINE - 1].ljust(LINE - 1) + "\n"
        os.pwrite(self.fd, line.encode(), slot * LINE)


def read_collectives(path) -> dict:
    """One rank's file: {rank, step, finished_through, collectives: [oldest … newest]}."""
    lines, data = [], open(path, "rb").read()
    for offset in range(0, len(data), LINE):  # by slot: a slot never written is a hole of zeros, no newline
        try:
            lines.append(json.loads(data[offset:offset + LINE].decode(errors="replace")))
        except ValueError:  # never written, or cut by the kill
            lines.append(None)
    head, entries = lines[0] or {}, sorted((e for e in lines[1:] if e), key=lambda e: e["seq"])
    return {**head, "collectives": entries}
