"""The strategy contract: how one gradient-synchronization method plugs into the loop.

A method is a `Strategy` subclass in one file: what it DOES (its hooks, below) and one
declaration of what it IS (`about = About(...)`, read before any process starts, so a
student's file outside the package works as ours do). Fifteen public names in all:

    cfg, rank, world      this run's config, this rank, how many ranks
    options               this run's values of the method's options: self.options.bucket_mb
    about                 the declaration (class level): About below
    prepare               once, before training: wrap the model or build buffers
    sync_gradients        after backward: communication before the update
    update                the optimizer step
    sync_parameters       after the update: communication after it (parameter servers)
    no_sync               around all but the last micro-batch (accumulate=K)
    after_step            after the timed step: bookkeeping, and figures for the step record
    whole_model           around validation and a checkpoint: the model whole
    state_dict / load_state_dict   what a checkpoint keeps of this rank's method
    held_tensors          tensors it keeps outside the model, for the memory count

Every step, after `loss.backward()`, the loop (labkit/training/step.py) calls

    strategy.sync_gradients(model)
    strategy.update(optimizer, scaler)
    strategy.sync_parameters(model)

and times each call, so a method never times or prints anything itself.

What the loop does around a method, so the method need not:
- Every rank starts from rank 0's parameters and buffers: the loop broadcasts them before
  `prepare` (`start_from_rank0`, as DDP's constructor does), so no method relies on every
  rank drawing the same random numbers.
- A checkpoint's model is restored before `prepare` (what the method builds starts from it);
  the loop optimizer's state after it, then `load_state_dict` with this rank's own, so the
  method acts on what it built.
- What a method sends is counted by the loop, not by the method: every torch.distributed call
  of a step (the method's own, DDP's and FSDP's inside backward, a comm hook's) is turned into
  the bytes the backend's algorithm sends, in one place (labkit/training/comm_record.py).
- Which data a rank reads follows from `about.servers`: a dedicated server reads none.
- checkpoint.pt holds the model whole: the loop saves it inside `whole_model` (and gathers a
  DTensor shard, as FSDP2 keeps them: labkit/training/checkpoint.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

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


@dataclass(frozen=True)
class About:
    """What a method says about itself, for the CLI, the loop and the report. A field given as a
    function is called with (cfg, options): the run's config and its option values, e.g.
    `label=lambda cfg, o: f"localsgd H={o.sync_every}"`. `About.of(cfg)` gives them as values."""

    options: tuple[Option, ...] = ()  # its settings, `--set NAME=VALUE`
    label: str | Callable = ""  # its name in comparisons ("" = the strategy's name); add options that change the wire
    refuse: Callable | None = None  # (cfg, o) → "" or the one line why it cannot run this config
    defaults: dict = field(default_factory=dict)  # config values it prefers, unless the user sets them
    plain_process: bool = False  # True: one process, no torchrun, no process group (single)
    servers: int | Callable = 0  # ranks 0..servers−1 compute no gradients (a dedicated parameter server)
    sync_every: int | Callable = 1  # steps from one synchronization to the next (local SGD: H)
    overlaps_backward: bool = False  # it communicates inside backward (hooks): no blocking sync time of its own
    mixed_precision: bool = False  # it takes --set param_dtype / reduce_dtype (gathers in a lower precision)
    # Its own passes over its buffers in a step, no wire (copy in, ÷n, additions, copy out): the cost
    # model's γ term. (params, rank, world, o) → {"fresh"/"in_place" [+ "_alone"]: [passes, bytes]}:
    # fresh = each pass writes a newly allocated buffer (torch.cat, x / n), else memory it holds (copy_,
    # +=); _alone = only this rank works while the others wait (a server). None: it makes none of its own.
    passes: Callable | None = None
    cost_model_note: str = ""  # a short phrase: what the α–β cost model's bare collectives leave out

    def option_values(self, given: dict) -> dict:
        """Every option, from `given` where set, else its default (a one-line ConfigError for a name
        it does not have)."""
        by_name = {o.name: o for o in self.options}
        unknown = set(given) - set(by_name)
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for this strategy; its options: {known}")
        return {name: o.parse(given[name]) if name in given else o.default for name, o in by_name.items()}

    def of(self, cfg) -> SimpleNamespace:
        """This declaration for one run: every field a value, `options` the option values (.NAME)."""
        o = SimpleNamespace(**self.option_values(cfg.options))
        value = lambda f: f(cfg, o) if callable(f) else f  # noqa: E731
        return SimpleNamespace(options=o, label=value(self.label) or cfg.strategy_name,
                               refusal=value(self.refuse) or "", defaults=self.defaults,
                               plain_process=self.plain_process, servers=value(self.servers),
                               sync_every=value(self.sync_every), overlaps_backward=self.overlaps_backward,
                               mixed_precision=self.mixed_precision, cost_model_note=self.cost_model_note)


class Strategy:
    """A method that does nothing on the wire: the plain training loop. Subclasses
    override the part they change; a docstring at the top of their file says the idea."""

    about = About()

    def __init__(self, cfg, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.options = SimpleNamespace(**self.about.option_values(cfg.options))  # self.options.bucket_mb

    def prepare(self, model, optimizer):
        """Once, before training, after every rank got rank 0's state: wrap the model or build
        buffers; returns the model to train."""
        return model

    def sync_gradients(self, model):
        """After backward: make every rank's gradients the average over the global batch."""

    def update(self, optimizer, scaler=None):
        """The optimizer step (with the fp16 loss scaler when there is one)."""
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def sync_parameters(self, model):
        """After the update: make every rank's parameters the same (parameter servers)."""

    def no_sync(self, model):
        """Around forward + backward of every micro-batch but the last (accumulate=K): a context
        in which backward only adds into .grad. A method that communicates in sync_gradients
        has nothing to hold back; one that communicates inside backward must write its own (as
        DDP's `no_sync()`), or each micro-batch would reduce."""
        if self.about.overlaps_backward:
            raise ConfigError(f"accumulate={self.cfg.accumulate}: {type(self).__name__} communicates inside backward "
                              f"and has no no_sync(model) to hold that back on all but the last micro-batch; write "
                              f"one, or use accumulate=1")
        return contextlib.nullcontext()

    def after_step(self, model) -> dict:
        """After the timed part of the step: bookkeeping, and figures of its own for this rank's step
        record (plain JSON types), e.g. {"staleness": [0, 1, 0]}; result.json keeps rank 0's."""
        return {}

    def whole_model(self, model):
        """Around validation and a checkpoint's save, on every rank: a context giving the model
        whole, as one plain process would hold it. The ranks' val shards may hold different numbers
        of batches, so its forward must need no collective (a sharded method gathers its
        parameters once, here)."""
        return contextlib.nullcontext(model)

    def state_dict(self) -> dict:
        """State this rank's method owns that a checkpoint must keep (plain types, CPU tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """On a resume, after prepare (which built from the checkpoint's model), with the loop's
        optimizer restored: take back this rank's own state."""

    def held_tensors(self) -> dict:
        """Tensors this method keeps itself, for the memory count (training/memory.py):
        {"params": [...], "grads": [...], "optimizer_state": [...]}, any key left out. The count
        already has the model's parameters and gradients and the loop optimizer's state; list
        what lives elsewhere (a shard and its gradient, an optimizer of the method's own: its
        state is optimizer_state_tensors(it)), or a rank's memory reads less than it holds."""
        return {}


def start_from_rank0(model, world: int) -> None:
    """Rank 0's parameters and buffers to every rank, one broadcast per dtype (DDP's constructor
    does the same): every method starts from the same model, whatever each rank's seed drew.
    The loop calls it before `prepare`."""
    if world == 1 or not is_distributed():
        return
    tensors = [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        for dtype in dict.fromkeys(t.dtype for t in tensors):  # in first-seen order: every rank alike
            group = [t for t in tensors if t.dtype == dtype]
            flat = flatten(group)
            dist.broadcast(flat, src=0)
            unflatten_into(flat, group)


def data_shard(rank: int, world: int, servers: int):
    """(shard index, shard count) of the data this rank trains on; None for a server rank."""
    return None if rank < servers else (rank - servers, world - servers)


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
