"""The strategy contract: how one gradient-synchronization method plugs into the loop.

The worker's loop calls, every step, after `loss.backward()`:

    strategy.sync_gradients(model)      # communication before the update
    strategy.update(optimizer, scaler)  # the optimizer step (the default: every rank)
    strategy.sync_parameters(model)     # communication after the update (parameter servers)

and times each call, so a strategy never times or prints anything itself. It only
counts what it puts on the wire (`count`, `count_all_reduce`), which the loop reads
and resets every step.

A method also *describes itself*, here in its class, so that the lab needs nothing
outside its file (a student's file outside the package works the same way):

    options      the settings it takes: Option(name, default, help, choices)
    defaults     config values it prefers (e.g. `single` runs one process)
    check(cfg)   refuse a combination it cannot do, with one line (raise ConfigError)
    data_ranks   how many ranks compute gradients
    label(cfg)   its name in comparisons (options that change the wire included)
    overlaps_backward   True if it communicates inside backward (what the timing can see)
    state_dict / load_state_dict   state it owns that a checkpoint must keep

Byte counts for collectives follow the ring algorithm (what NCCL uses for large
messages): an all-reduce of S bytes over n ranks sends and receives 2(n−1)/n·S per
rank, a reduce-scatter or all-gather (n−1)/n·S. Point-to-point sends count exactly.
Each count also names its operation and message size, for the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist


def _config_error():
    from labkit.config import ConfigError as LabConfigError  # light: no torch

    return LabConfigError


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
        if isinstance(value, str) and kind is not str:
            text = value.strip().lower()
            if kind is bool:
                if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise _config_error()(f"--set {self.name}={value}: expected true or false")
                value = text in ("1", "true", "yes", "on")
            else:
                try:
                    value = kind(text)
                except ValueError:
                    raise _config_error()(f"--set {self.name}={value}: expected a {kind.__name__}") from None
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise _config_error()(f"{self.name}={value!r}: expected a {kind.__name__}")
        if self.choices and value not in self.choices:
            raise _config_error()(f"{self.name}='{value}' is not one of {', '.join(map(str, self.choices))}")
        return value


class Strategy:
    # -- how the method describes itself (class level: read before any process starts) --
    options: tuple[Option, ...] = ()
    defaults: dict = {}  # config values this method prefers, unless the user sets them
    needs_process_group = True  # False: one plain process, no torchrun
    # True: its communication runs inside backward (hooks), so the loop's blocking sync time
    # does not hold it, and no bandwidth can be computed from that time
    overlaps_backward = False
    cost_model_note = ""  # why the alpha-beta model misses this method, where it is known to

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse a configuration this method cannot run (raise ConfigError, one line)."""

    @classmethod
    def data_ranks(cls, cfg) -> int:
        """How many ranks compute gradients (a dedicated parameter server computes none)."""
        return cfg.nproc

    @classmethod
    def label(cls, cfg) -> str:
        """The method's name in comparisons. Override to add options that change the wire."""
        return cfg.strategy_name

    @classmethod
    def option_values(cls, given: dict) -> dict:
        """Every option of this method, from `given` where set, else its default."""
        by_name = {o.name: o for o in cls.options}
        unknown = set(given) - set(by_name)
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise _config_error()(f"unknown option(s) {sorted(unknown)} for this strategy; its options: {known}")
        return {name: o.parse(given[name]) if name in given else o.default for name, o in by_name.items()}

    # -- the contract --------------------------------------------------------------
    def __init__(self, cfg, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.opt = SimpleNamespace(**type(self).option_values(getattr(cfg, "options", {}) or {}))
        self.reset_counters()

    def data_shard(self):
        """(shard index, shard count) of the data this rank trains on; None = no data."""
        return self.rank, self.world

    def prepare(self, model, optimizer):
        return model

    def sync_gradients(self, model):
        pass

    def update(self, optimizer, scaler=None):
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def sync_parameters(self, model):
        pass

    def after_step(self, model):
        """Bookkeeping after the timed part of the step (e.g. reading a library's counters)."""

    def state_dict(self) -> dict:
        """State this method owns that a checkpoint must keep (per rank)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- counters ------------------------------------------------------------------
    def reset_counters(self):
        self.bytes_sent = self.bytes_received = self.collectives = 0
        self.ops = {}  # {operation: [calls, message bytes]}, what the cost model predicts from

    def count(self, sent=0, received=0, collectives=1, op=None, message_bytes=0):
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)
        self.collectives += collectives
        if op:
            calls, size = self.ops.get(op, (0, 0))
            self.ops[op] = [calls + collectives, size + int(message_bytes)]

    def count_all_reduce(self, nbytes, calls=1):
        ring = 2 * (self.world - 1) / self.world * nbytes
        self.count(ring, ring, collectives=calls, op="all_reduce", message_bytes=nbytes)


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def grads_of(model):
    """The gradient tensors of the trainable parameters, in a fixed order."""
    return [p.grad for p in model.parameters() if p.requires_grad]


def flatten(tensors) -> torch.Tensor:
    # reshape, not view: a channels_last weight is not contiguous in NCHW order
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors) -> None:
    """Copy slices of `flat` back into `tensors` (the inverse of flatten); copy_ keeps
    each tensor's own memory format (channels_last stays channels_last)."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()
