"""fsdp, and what torch.distributed really ran under it: a test's witness for the wire counts.

The loop counts what the process group ran (training/comm_record.py). This subclass, a second
witness, wraps the two collectives FSDP2 calls (`dist.all_gather_single`, `dist.reduce_scatter_single`,
looked up on torch.distributed at every call) and writes, after each step, the calls and
message bytes it saw to traced-<rank>.jsonl in the run folder (an all-gather's gathered buffer,
a reduce-scatter's input), so a test compares the two.
Run as `--strategy tests/fsdp_traced.py:TracedFSDP`.
"""

import json
from pathlib import Path

import torch.distributed as dist

from labkit.strategies.fsdp import FullyShardedDP


class TracedFSDP(FullyShardedDP):
    def prepare(self, model, optimizer):
        self.traced = {}
        for op, size_of in (("all_gather", lambda output, input: output), ("reduce_scatter", lambda output, input: input)):
            name = f"{op}_single"
            real = getattr(dist, name)

            def traced(output, input, *args, _real=real, _op=op, _size_of=size_of, **kwargs):
                calls, size = self.traced.get(_op, (0, 0))
                tensor = _size_of(output, input)
                self.traced[_op] = [calls + 1, size + tensor.numel() * tensor.element_size()]
                return _real(output, input, *args, **kwargs)

            setattr(dist, name, traced)
        return super().prepare(model, optimizer)

    def after_step(self, model):
        with open(Path(self.cfg.out_dir) / f"traced-{self.rank}.jsonl", "a") as log:
            log.write(json.dumps(self.traced) + "\n")
        self.traced = {}
        return super().after_step(model)
