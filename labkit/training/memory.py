"""Memory per rank: what each rank holds, counted from its tensors, and the peak it reached.

The lesson of ZeRO (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", SC 2020) and of FSDP, as numbers. With SGD and momentum, DDP
keeps on every rank the full parameters, the full gradients and the full momentum;
ps_sharded (ZeRO stage 1) keeps 1/n of the momentum; FSDP (ZeRO stage 3) 1/n of all three.
With AdamW (`--set optimizer=adamw`) the optimizer state is two moments per parameter, 2×
the parameters' bytes on DDP and 2/n of them on the sharded methods: ZeRO's larger saving.

Counted once, at the end of the first measured step (after warm-up), while the gradients
still exist: the loop frees them with zero_grad(set_to_none=True) right after. Each tensor
counts once, as numel × element_size; of a sharded parameter (a DTensor: FSDP2) only the
local shard this rank stores.

    params_bytes           the model's parameters
    grads_bytes            their .grad tensors
    optimizer_state_bytes  the loop optimizer's state (SGD's momentum; AdamW's two moments and
                           a 4-byte step count per parameter tensor)

each plus what the method keeps itself (Strategy.held_tensors: ps_sharded's shard, its
gradient and its shard optimizer's state). Not counted: buffers (BatchNorm statistics),
communication buffers (DDP's buckets, a method's flat copies) and activations: those show
only in the peak.

Measured, not counted: `peak_bytes`, from the start of training (after the calibration and
the method's prepare) to the end of the run, validation included; `peak_source` says what:
  GPU: torch.cuda.max_memory_allocated, every tensor torch had allocated on this rank's GPU
       at its peak (not the caching allocator's spare reserve, nor the CUDA context);
  CPU: the process's peak resident set (Linux: VmHWM, reset at the start of training by
       writing 5 to /proc/self/clear_refs; elsewhere getrusage's ru_maxrss since the process
       started): everything the process holds, the interpreter, torch's libraries and the
       data included, so far above the tensors alone; loader worker processes are not in it.
`start_bytes` is the same measure when training began, `step_peak_bytes` the peak at the
moment of the count: over the training steps so far, before the run's first validation and
checkpoint (at the epoch's end), which a sharded method spends gathering its model whole —
so step_peak − start is what the training steps added (activations, buffers, state).
"""

import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from labkit.strategies.base import optimizer_state_tensors

KINDS = ("params", "grads", "optimizer_state")
PROC = Path("/proc/self")  # Linux's view of this process: its peak RSS can be reset and read there


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank stores for `tensor`: of a DTensor, its local shard only; none for a tensor
    whose storage is freed."""
    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    if tensor.untyped_storage().nbytes() == 0:  # its memory freed (resized to 0, as FSDP does between uses)
        return 0
    return tensor.numel() * tensor.element_size()


def count_held(tensors: dict) -> dict:
    """{kind: [tensors]} → {kind_bytes: total}, each tensor counted once (by identity: a
    method that lists a model parameter again does not double it)."""
    seen, totals = set(), {}
    for kind in KINDS:
        totals[f"{kind}_bytes"] = 0
        for tensor in tensors.get(kind, ()):
            if tensor is not None and id(tensor) not in seen:  # every tensor stays alive here: ids are unique
                seen.add(id(tensor))
                totals[f"{kind}_bytes"] += local_bytes(tensor)
    return totals


class MemoryMeter:
    """One rank's memory figures. The recorder arms it at the counting step; the step calls
    count() before zero_grad; figures() reads the peak at the end of the run."""

    def __init__(self, rank: int, device: torch.device, count_at: int):
        self.rank, self.device, self.count_at = rank, device, count_at
        self.armed, self.counted = False, None
        self.peak_source = reset_peak(device)  # the peak from here on: training, not the setup before it
        self.start_bytes = read_peak(device)  # just reset: what is held now

    def arm(self, step: int):
        """Count at this step if it is the counting step (or the first after it: a resumed run)."""
        self.armed = self.counted is None and step >= self.count_at
        self.step = step

    def count(self, model, optimizer, strategy):
        """The bytes this rank holds now: call it after the step's update, before zero_grad."""
        if not self.armed:
            return
        params = list(model.parameters())
        mine = {"params": params, "grads": [p.grad for p in params],
                "optimizer_state": optimizer_state_tensors(optimizer)}
        for kind, tensors in strategy.held_tensors().items():  # what the method keeps outside the model
            if kind not in KINDS:
                raise ValueError(f"{type(strategy).__name__}.held_tensors() returned '{kind}'; "
                                 f"its keys are {', '.join(KINDS)}")
            mine[kind] = [*mine[kind], *tensors]
        self.counted = {"step": self.step, **count_held(mine), "step_peak_bytes": read_peak(self.device)}
        self.armed = False

    def figures(self) -> dict:
        """This rank's entry of result.json's `memory` (null counts if no step ran in this attempt)."""
        counted = self.counted or dict.fromkeys(["step", *(f"{k}_bytes" for k in KINDS), "step_peak_bytes"])
        return {"rank": self.rank, **counted, "peak_bytes": read_peak(self.device), "start_bytes": self.start_bytes,
                "peak_source": self.peak_source}


def reset_peak(device) -> str:
    """Start the peak from now; return what the peak will mean."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda max_memory_allocated since training began (tensors only)"
    try:
        (PROC / "clear_refs").write_text("5")  # 5: reset the peak resident set to the current one
        return "process peak RSS since training began (VmHWM; interpreter, libraries and data included)"
    except OSError:
        return "process peak RSS since the process started (ru_maxrss; interpreter, libraries and data included)"


def read_peak(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        line = next(line for line in (PROC / "status").read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # kB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def gather_memory(meter: MemoryMeter) -> list[dict]:
    """Every rank's memory figures, as a list by rank (like the ranks' median step times)."""
    mine = meter.figures()
    if not dist.is_initialized():
        return [mine]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone
