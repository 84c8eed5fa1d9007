"""Test-only: any lab method with what torch ran recorded (tests/test_counted_carried.py).

`--strategy tests/counted.py:Counted_ps_sharded` runs ps_sharded unchanged, with a
`CommRecord` (labkit/training/comm_record.py) entered once prepare is done and left open for the
run: it sees every c10d op of each step (forward and backward too, so DDP's and FSDP's hooks).
At each step's end (`after_step`, right after the loop read the link counters) each rank writes
into counted-RANK.json, per step: the bytes the gloo model says it sent, what the method's own
`Wire` counted, and what its node's link carried (the kernel's tx counter, read here so that
the ops and the bytes are taken over the same stretch of time).
"""

import json
from pathlib import Path

import torch.distributed as dist

from labkit.strategies import REGISTRY, load_strategy
from labkit.training.comm_record import CommRecord, step_summary
from labkit.training.links import LinkMeter


def counted(base):
    class Counted(base):
        def prepare(self, model, optimizer):
            model = super().prepare(model, optimizer)
            self.link = LinkMeter(self.cfg)
            self.tx_before = self.link.read()[0] if self.link.active else None
            self.counted_steps = []
            self.record = CommRecord()
            self.record.__enter__()  # open for the rest of the run: this thread's mode stack
            return model

        def after_step(self, model):
            super().after_step(model)
            summary = step_summary(self.record.take(), dist.get_backend())
            tx = self.link.read()[0] if self.link.active else None
            carried = tx - self.tx_before if tx is not None else None
            self.tx_before = tx
            self.counted_steps.append({"dispatcher_bytes_sent": summary["bytes_sent"],
                                       "wire_bytes_sent": self.wire.bytes_sent, "link_tx_bytes": carried,
                                       "ops": summary["ops"]})
            path = Path(self.cfg.out_dir) / f"counted-{self.rank}.json"
            path.write_text(json.dumps({"rank": self.rank, "backend": dist.get_backend(),
                                        "steps": self.counted_steps}))

    Counted.__name__ = Counted.__qualname__ = f"Counted_{base.__name__}"
    return Counted


for _name in REGISTRY:
    if _name != "single":
        globals()[f"Counted_{_name}"] = counted(load_strategy(_name))
