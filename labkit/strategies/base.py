"""The strategy contract: how one gradient-synchronization method plugs into the loop.

A `Strategy` has three parts, each its own section below:

1. What the method DOES. Every step, after `loss.backward()`, the loop calls

       strategy.sync_gradients(model)      # communication before the update
       strategy.update(optimizer, scaler)  # the optimizer step (the default: every rank)
       strategy.sync_parameters(model)     # communication after the update (parameter servers)

   and times each call, so a method never times or prints anything itself. Around
   them: `prepare` (once, before training), `data_shard` (which data this rank reads),
   `after_step` (bookkeeping outside the timed window), `step_record` (figures of its own
   for this step's record, e.g. ssp's staleness), `state_dict` for checkpoints,
   `held_tensors` for the memory count (tensors the method keeps outside the model and
   the loop's optimizer: a shard, its gradient, its own optimizer's state).
   A method that shards the model itself (fsdp) also says how to see it whole:
   `full_state` (the model's and optimizer's full tensors for checkpoint.pt) and
   `evaluating` (around validation: a forward that needs no other rank). Every rank calls both.
   With `--set accumulate=K` a step runs forward/backward on K micro-batches, the first
   K−1 inside `with strategy.no_sync(model):`: their backward must only add into .grad.
   A method that communicates in sync_gradients needs nothing (the default); one that
   communicates inside backward (hooks) holds that back there, as DDP's `no_sync()` does.

   Every method starts from rank 0's state: before any `prepare` runs (a subclass's
   own included), the contract broadcasts rank 0's parameters and buffers to every
   rank, as DDP's constructor does (`broadcast_initial_state`; a subclass may not
   override it). So no method relies on every rank drawing the same random numbers.

2. How it is COUNTED: not by the method. The loop records every torch.distributed call
   torch runs during a step (labkit/training/comm_record.py: the method's own, DDP's and
   FSDP's inside backward, a comm hook's on the backend's threads, subgroups and
   point-to-point included) and turns each into the bytes the backend's algorithm sends, in
   one place. A method file holds no counting line.
   Only its own passes over its buffers (copy in, ÷n, copy out: the cost model's γ term,
   no wire) are said on `self.wire.local(...)`.

3. How it DESCRIBES itself, at class level, read before any process starts (so a
   student's file outside the package works the same way as ours):

       options      the settings it takes: Option(name, default, help, choices);
                    a running method reads them as self.options.NAME, a
                    classmethod as cls.options_of(cfg).NAME
       defaults     config values it prefers (e.g. `single` runs one process)
       check(cfg)   refuse a combination it cannot do: raise ConfigError("one line")
       data_ranks   how many ranks compute gradients
       label(cfg)   its name in comparisons (options that change the wire included)
       sync_period(cfg)      steps between synchronizations (1; local SGD: H), for the figures
       needs_process_group   False: one plain process, no torchrun
       broadcasts_in_prepare True: prepare itself makes every rank start from rank 0's
                             state (DDP's constructor), so the contract's broadcast is skipped
       overlaps_backward     True if it communicates inside backward (what timing can see)
       cost_model_note       a short phrase: what the alpha-beta cost model leaves out
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist

from labkit.config import bool_word
from labkit.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One setting of a method: `--set NAME=VALUE`. Its type is the default's type."""

    name: str
    default: bool | int | float | str
    help: str = ""
    choices: tuple = ()

    def parse(self, value):
        """The value in the option's type, or a one-line ConfigError."""
        kind = type(self.default)
        if isinstance(value, str) and kind is bool:
            if bool_word(value) is None:
                raise ConfigError(f"--set {self.name}={value}: expected true or false")
            value = bool_word(value)
        elif isinstance(value, str) and kind is not str:
            try:
                value = kind(value.strip())
            except ValueError:
                raise ConfigError(f"--set {self.name}={value}: expected a {kind.__name__}") from None
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ConfigError(f"{self.name}={value!r}: expected a {kind.__name__}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name}='{value}' is not one of {', '.join(map(str, self.choices))}")
        return value


class Wire:
    """The method's own passes over its buffers in one step (no wire: copy in, ÷n, additions,
    copy out), the γ term of the cost model. What it SENDS is not said here: the loop counts
    every torch.distributed call itself (labkit/training/comm_record.py). The loop calls
    `reset()` before the step and records `as_dict()` after it."""

    def __init__(self, world: int = 1):
        self.world = world
        self.reset()

    def reset(self):
        self.local_ops = {}  # {"in_place" or "fresh", "_alone" after it: [passes, bytes]}

    def local(self, nbytes, passes=1, fresh=False, alone=False):
        """`passes` passes of the method's own over `nbytes` bytes in all (the larger side of a
        cast), nothing on the wire. fresh: each writes a newly allocated buffer (torch.cat, x / n,
        pad, .to); else memory the method already holds (copy_, +=, /=). On a CPU the two differ:
        the OS zeroes a large fresh buffer's pages on first touch (measure/collectives.py).
        alone: only this rank works while the others wait (a server), so it has the cores and
        the memory bandwidth to itself; else every rank makes the same pass at once."""
        kind = ("fresh" if fresh else "in_place") + ("_alone" if alone else "")
        passes_so_far, size = self.local_ops.get(kind, (0, 0))
        self.local_ops[kind] = [passes_so_far + passes, size + int(nbytes)]

    def as_dict(self) -> dict:
        return {"local_ops": {kind: list(v) for kind, v in self.local_ops.items()}}


def starts_from_rank0(prepare):
    """`prepare`, run after the contract's broadcast of rank 0's state (once per method,
    also when a subclass's prepare calls super().prepare)."""
    @functools.wraps(prepare)  # inspect.getsource still shows the method's own prepare
    def prepare_from_rank0(self, model, optimizer):
        if not getattr(self, "_started_from_rank0", False):
            self._started_from_rank0 = True
            self.broadcast_initial_state(model)
        return prepare(self, model, optimizer)
    return prepare_from_rank0


class Strategy:
    """A method that does nothing on the wire: the plain training loop. Subclasses
    override the part they change; a docstring at the top of their file says the idea."""

    # == 1. what the method does =====================================================
    def __init__(self, cfg, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.options = type(self).options_of(cfg)  # this run's values: self.options.bucket_mb
        self.wire = Wire(world)  # 2. its own passes over its buffers (γ); what it sends, the loop counts

    def __init_subclass__(cls, **kwargs):
        # Whatever a subclass's prepare does, rank 0's state reaches every rank first.
        super().__init_subclass__(**kwargs)
        if "broadcast_initial_state" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides Strategy.broadcast_initial_state: every method starts "
                            f"from rank 0's state (the contract broadcasts it before prepare); do your own "
                            f"setup in prepare instead")
        if "prepare" in vars(cls):
            cls.prepare = starts_from_rank0(vars(cls)["prepare"])

    def broadcast_initial_state(self, model):
        """Rank 0's parameters and buffers to every rank, one broadcast per dtype (DDP's
        constructor does the same): every rank starts from the same model, whatever its seed."""
        if self.world == 1 or not is_distributed() or self.broadcasts_in_prepare:
            return
        tensors = [*model.parameters(), *model.buffers()]
        with torch.no_grad():
            for dtype in dict.fromkeys(t.dtype for t in tensors):  # in first-seen order: every rank alike
                group = [t for t in tensors if t.dtype == dtype]
                flat = flatten(group)
                dist.broadcast(flat, src=0)
                unflatten_into(flat, group)

    @starts_from_rank0
    def prepare(self, model, optimizer):
        """Once, before training: wrap the model or build buffers; returns the model to train.
        (Rank 0's state has been broadcast when it runs: see broadcast_initial_state.)"""
        return model

    def data_shard(self):
        """(shard index, shard count) of the data this rank trains on; None = no data."""
        return self.rank, self.world

    def sync_gradients(self, model):
        """After backward: make every rank's gradients the average over the global batch."""

    def no_sync(self, model):
        """Around forward + backward of every micro-batch but the last (accumulate=K): a
        context in which backward only accumulates gradients. Nothing to hold back here."""
        return contextlib.nullcontext()

    def update(self, optimizer, scaler=None):
        """The optimizer step (with the fp16 loss scaler when there is one)."""
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def sync_parameters(self, model):
        """After the update: make every rank's parameters the same (parameter servers)."""

    def after_step(self, model):
        """Bookkeeping after the timed part of the step (e.g. reading a library's counters)."""

    def step_record(self) -> dict:
        """Figures of this method's own for this rank's step record (plain JSON types), merged
        into it after the step, e.g. {"staleness": [0, 1, 0]}; result.json keeps rank 0's."""
        return {}

    def state_dict(self) -> dict:
        """State this method owns that a checkpoint must keep (per rank)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def held_tensors(self) -> dict:
        """Tensors this method keeps itself, for the memory count (training/memory.py):
        {"params": [...], "grads": [...], "optimizer_state": [...]}, any key left out. The count
        already has the model's parameters and gradients and the loop optimizer's state; list
        what lives elsewhere (a shard and its gradient, an optimizer of the method's own: its
        state is optimizer_state_tensors(it)), or a rank's memory reads less than it holds."""
        return {}

    def full_state(self, model, optimizer) -> tuple[dict, dict]:
        """(model state, optimizer state) as one plain process holds them, for rank 0 to
        write into checkpoint.pt. Every rank calls it: a sharded method gathers here."""
        return model.state_dict(), optimizer.state_dict()

    def evaluating(self, model):
        """Around validation, on every rank: a context giving the model to evaluate. The
        ranks' val shards may hold different numbers of batches, so a forward must need no
        collective (a sharded method gathers its parameters once, here)."""
        return contextlib.nullcontext(model)

    # == 3. how the method describes itself (class level) ============================
    options: tuple[Option, ...] = ()  # on the class its Options; on a running method their values
    defaults: dict = {}  # config values this method prefers, unless the user sets them
    needs_process_group = True  # False: one plain process, no torchrun
    broadcasts_in_prepare = False  # True: prepare itself starts every rank from rank 0's state (DDP)
    # True: its communication runs inside backward (hooks), so the loop's blocking sync time
    # does not hold it, and no bandwidth can be computed from that time
    overlaps_backward = False
    # True: takes --set param_dtype / reduce_dtype (gathers, computes or reduces in a lower
    # precision than the fp32 weights it keeps); else those must stay fp32 (profiles refuses)
    mixed_precision = False
    cost_model_note = ""  # a short phrase: what the cost model's bare collectives leave out

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse a configuration this method cannot run (raise ConfigError, one line)."""

    @classmethod
    def refuses_sync_bn(cls, cfg) -> str:
        """Why `sync_bn=true` cannot run with this method ("" when it can). SyncBatchNorm
        makes a collective in every BatchNorm's forward and backward, so it needs every rank
        running the same model's forward in the same step, synchronizing every step."""
        if not cls.needs_process_group:
            return "it runs one process, with no other rank to normalize with"
        if cls.data_ranks(cfg) < cfg.nproc:
            return "its server ranks run no forward, so the workers' BatchNorm collectives would wait for them forever"
        if cls.sync_period(cfg) > 1:
            return (f"its ranks train apart for {cls.sync_period(cfg)} steps between synchronizations, and "
                    f"SyncBatchNorm would make them communicate in every BatchNorm of every step")
        return ""

    @classmethod
    def sync_period(cls, cfg) -> int:
        """Steps from one synchronization to the next (local SGD: H). The summary takes its
        figures over whole periods (timing.per_period), so the dear step is not outvoted."""
        return 1

    @classmethod
    def data_ranks(cls, cfg) -> int:
        """How many ranks compute gradients (a dedicated parameter server computes none)."""
        return cfg.nproc

    @classmethod
    def label(cls, cfg) -> str:
        """The method's name in comparisons. Override to add options that change the wire."""
        return cfg.strategy_name

    @classmethod
    def options_of(cls, cfg) -> SimpleNamespace:
        """The values of this method's options in `cfg`, read as `.NAME` (defaults filled in).
        A running method has them as `self.options`; a classmethod reads `cls.options_of(cfg)`."""
        return SimpleNamespace(**cls.option_values(cfg.options))

    @classmethod
    def option_values(cls, given: dict) -> dict:
        """Every option of this method, from `given` where set, else its default."""
        by_name = {o.name: o for o in cls.options}
        unknown = set(given) - set(by_name)
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for this strategy; its options: {known}")
        return {name: o.parse(given[name]) if name in given else o.default for name, o in by_name.items()}


def nbytes(tensor: torch.Tensor) -> int:
    """What a tensor weighs on the wire: numel × element_size, whatever its dtype."""
    return tensor.numel() * tensor.element_size()


def grads_of(model):
    """The gradient tensors of the trainable parameters, in a fixed order."""
    return [p.grad for p in model.parameters() if p.requires_grad]


def optimizer_state_tensors(optimizer) -> list:
    """The tensors an optimizer keeps per parameter: SGD's momentum buffer, Adam's two
    moments and its step count (torch's own optimizers keep them in `optimizer.state`)."""
    return [value for state in optimizer.state.values() for value in state.values()
            if isinstance(value, torch.Tensor)]


def flatten(tensors) -> torch.Tensor:
    # reshape, not view: a channels_last weight is not contiguous in NCHW order
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors) -> None:
    """Copy slices of `flat` back into `tensors` (the inverse of flatten); copy_ keeps
    each tensor's own memory format (channels_last stays channels_last). `flat` may be
    longer (padding at its end is ignored), never shorter."""
    needed = sum(t.numel() for t in tensors)
    if flat.numel() < needed:
        raise ValueError(f"unflatten_into: the flat buffer holds {flat.numel()} values but the {len(tensors)} tensors "
                         f"need {needed}: it lost {needed - flat.numel()} on the way (a padded length rounded down?)")
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
