"""RunConfig: one flat dataclass that says everything about a run.

Like nanoGPT's train.py, a run is plain defaults plus overrides. A *profile* is a
named set of overrides (the original ImageNet experiment, a synthetic GPU run, the
small CPU lab); `auto` picks one from what this machine has. The config travels to
every rank as config.json, so it holds plain JSON types only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError  # raised here, and still importable from here

def lab_root() -> Path:
    """Where the lab's data/, results/ and notebooks/ live: the checkout that holds labkit/ — or,
    for a package installed from its wheel (labkit/ in site-packages, no checkout around it),
    $LABKIT_HOME or the folder labkit was started in, never the site-packages folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() or (here / "notebooks").is_dir():
        return here
    return Path(os.environ.get("LABKIT_HOME") or Path.cwd()).resolve()


LAB_ROOT = lab_root()


def results_root() -> Path:
    """results/ of the lab, or $LABKIT_RESULTS (the test suite keeps its runs apart this way)."""
    return Path(os.environ.get("LABKIT_RESULTS") or LAB_ROOT / "results")

MODELS = ("resnet50", "resnet18", "resnet18_small", "simple_cnn")  # built by training/models.py
DATASETS = ("imagenet", "imagefolder", "tiny", "synthetic")
AMP_MODES = ("off", "bf16", "fp16")
DTYPES = ("float32", "float64")


@dataclass
class RunConfig:
    # what to run
    # a name (labkit strategies) or path/to/file.py:ClassName; "" = the baseline (ddp), which
    # make_config fills in: the registry of methods is strategies' to know, not the config's
    strategy: str = ""
    profile: str = "cpu"
    name: str = ""  # run folder name; default <strategy>-<profile>-<timestamp>
    # model and data
    model: str = "resnet18_small"
    dataset: str = "tiny"
    data_dir: str = ""  # "" = the lab's data/<dataset> folder
    image_size: int = 32
    num_classes: int = 10
    augment: bool = True  # random crop + flip on the training set
    # processes
    nproc: int = 4  # ranks in the whole job, over every node (one per GPU with NCCL)
    # nodes: one machine (1), several real machines (rdzv_endpoint set: each runs `labkit run
    # --node-rank R`), or several emulated on this one (rdzv_endpoint empty: a network namespace
    # per node, each with its own torchrun agent, linked through a bridge; labkit/jobs/cluster.py)
    nodes: int = 1  # nodes in the job; each runs nproc / nodes ranks
    node_rank: int = 0  # which node this machine is (real nodes)
    rdzv_endpoint: str = ""  # HOST:PORT of the rendezvous on node 0 (real nodes)
    interface: str = ""  # network interface gloo and NCCL use, and whose address the stores bind (real nodes)
    link: str = ""  # emulated nodes: each node's egress shaped to this rate with tc (e.g. 1gbit); "" = unshaped
    backend: str = "auto"  # auto = nccl on GPUs, gloo otherwise
    device: str = "auto"  # auto = cuda when the backend is nccl (or GPUs exist), else cpu
    workers: int = 2  # DataLoader worker processes per rank
    # length
    epochs: int = 3
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit)
    synthetic_steps: int = 50  # steps per epoch on the synthetic dataset
    # optimisation (per-rank batch; the global batch is batch_size × data-parallel ranks)
    batch_size: int = 16
    # the recipe's global batch (0 = batch_size × data ranks): when set and batch_size is not,
    # each rank takes global_batch_size ÷ data ranks, so `single` (1 rank) trains on the same
    # global batch, learning rate and number of steps per epoch as the distributed runs
    global_batch_size: int = 0
    lr: float = 0.0  # 0 = the linear scaling rule: 0.1 × global batch / 256
    lr_warmup_steps: int = 0  # linear warm-up: step k (1-based) of the first N uses lr × k/N (0 = none)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # the loop's optimizer: sgd (with momentum) or adamw (decoupled weight decay; give it its own lr);
    # a sharded method shards whichever it is (training/optim.py)
    optimizer: str = "sgd"
    seed: int = 0
    # GPU speed options
    amp: str = "off"  # off / bf16 / fp16 autocast (fp16 adds a GradScaler)
    channels_last: bool = False
    # measurement
    # the first N steps, while caches, the allocator and autotuning settle: left out of the summary
    # figures, the timeline and the memory count (the learning rate's warm-up is lr_warmup_steps)
    timing_warmup_steps: int = 2
    calibration_steps: int = 5  # compute-only steps before training, for exposed_comm_pct (0 = skip)
    timeline_steps: int = 4  # steps after warm-up whose phases every rank records for the timeline
    # the method's own options (declared in its file: labkit strategies), e.g. {"bucket_mb": 5.0}
    options: dict = dataclasses.field(default_factory=dict)
    # set from the method when the config is made (make_config), written into config.json
    data_ranks: int = 0  # ranks that compute gradients (0 = every rank)
    torchrun: bool = True  # False: one plain process (a method that needs no process group)
    # numerics: float64 makes exact methods agree with DDP to ~1e-12 (rounding, not algorithm)
    dtype: str = "float32"
    stop_on_nonfinite: bool = True  # a NaN/inf loss fails the run ("loss became nan at step K")
    # where the run folder goes
    out_dir: str = ""  # "" = results/runs/<name>
    # reliability
    checkpoint_every: int = 0  # also checkpoint every N steps (0 = at the end of each epoch only)
    resume: bool = False  # continue from out_dir/checkpoint.pt (labkit run --resume DIR)
    max_restarts: int = 0  # torchrun restarts the workers this often; they resume from the checkpoint
    pg_timeout_s: float = 1800.0  # a collective waiting longer than this fails the run
    watchdog_s: float = 900.0  # no step on any rank for this long: the job is stopped as hung
    # fault injection, for tests and for teaching fault tolerance: "RANK:STEP:KIND",
    # KIND one of raise / exit / kill / hang; fires on a run's first attempt only
    fault: str = ""
    # a slow worker, for every method: "RANK:FACTOR" makes RANK's compute take FACTOR × as long
    # (it sleeps (FACTOR − 1) × its own forward + backward time each step); "" = none
    straggler: str = ""
    # gradient accumulation: each optimizer step takes this many micro-batches of batch_size per
    # rank, synchronizing only after the last (the global batch grows by this factor)
    accumulate: int = 1
    # -- seeing and debugging (issue 30) --
    # a torch.profiler Chrome trace of a few steps after warm-up, one file per rank in the run
    # folder (open it in Perfetto or chrome://tracing); off by default: it slows those steps
    trace: bool = False
    # BatchNorm over the global batch: torch's SyncBatchNorm.convert_sync_batchnorm (each rank
    # otherwise normalizes over its own batch only); for methods where every rank trains the model
    sync_bn: bool = False
    # fsdp's mixed precision (FSDP2's MixedPrecisionPolicy): the dtype of the gathered parameters
    # (compute and all-gather) and of the reduce-scatter; fp32 master weights and optimizer state
    param_dtype: str = "fp32"  # fp32 / bf16 / fp16
    reduce_dtype: str = ""  # "" = the param_dtype

    # -- JSON round trip -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config key(s) {sorted(unknown)}; see `labkit run --help`")
        return cls(**values)

    @classmethod
    def load(cls, path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- derived values --------------------------------------------------------
    @property
    def ranks_per_node(self) -> int:
        return self.nproc // max(1, self.nodes)

    @property
    def emulated(self) -> bool:
        """Several nodes emulated on this machine (no rendezvous endpoint of real nodes given)."""
        return self.nodes > 1 and not self.rdzv_endpoint

    @property
    def global_batch(self) -> int:
        """Images in one optimizer step over every rank: batch_size × data ranks × accumulate."""
        return self.batch_size * (self.data_ranks or self.nproc) * self.accumulate

    @property
    def strategy_name(self) -> str:
        """'ddp', or the class name of a method given as path/to/file.py:ClassName."""
        return self.strategy.rsplit(":", 1)[1] if is_file_spec(self.strategy) else self.strategy

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr > 0 else 0.1 * self.global_batch / 256

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (1-based): lr × step / lr_warmup_steps
        during the warm-up, then lr. A function of the step number alone, so a resumed run
        continues the schedule where it stopped and every rank agrees on it."""
        if self.lr_warmup_steps > 0 and step < self.lr_warmup_steps:
            return self.learning_rate * step / self.lr_warmup_steps
        return self.learning_rate


RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}  # tc's units, bits per second


def parse_rate(text: str) -> float:
    """A link rate as tc writes it ('100mbit', '1gbit', '2.5gbit') → bits per second, or a
    one-line ConfigError."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit)\s*", text.lower())
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"link='{text}' is not a rate tc can shape to; write e.g. 100mbit, 1gbit or 10gbit")
    return float(match[1]) * RATE_UNITS[match[2]]


def parse_straggler(text: str, nproc: int) -> tuple[int | None, float] | None:
    """`straggler=RANK:FACTOR` → (rank, factor), None for "", or a one-line ConfigError.
    FACTOR ≥ 1: the rank's forward + backward takes FACTOR × its own time (1 = not slowed).
    RANK `any` → (None, factor): each step a different rank, drawn at random (a transient
    straggler: a busy neighbour, a garbage collection, a slow batch)."""
    if not text:
        return None
    rank, _, factor = text.partition(":")
    try:
        rank, factor = None if rank == "any" else int(rank), float(factor)
    except ValueError:
        rank = factor = -1
    if not ((rank is None or 0 <= rank < nproc) and 1 <= factor < float("inf")):  # NaN fails too
        raise ConfigError(f"straggler='{text}': expected RANK:FACTOR with 0 <= RANK < {nproc} (or any: a random "
                          f"rank each step) and FACTOR >= 1 (e.g. 1:3, rank 1 computing 3 × slower)")
    return rank, factor


def is_file_spec(spec: str) -> bool:
    """'path/to/file.py:ClassName' (a method outside the package) rather than a registry name."""
    return ":" in spec and spec.rsplit(":", 1)[0].endswith(".py")


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def bool_word(text: str) -> bool | None:
    """True or False for the words a user may write for them (true, yes, on, 1...), else None."""
    lowered = text.strip().lower()
    return True if lowered in TRUE_WORDS else False if lowered in FALSE_WORDS else None


def field_types() -> dict[str, type]:
    return typing.get_type_hints(RunConfig)


def parse_value(key: str, text: str):
    """Turn the text of `--set key=value` into the field's type, or explain why not."""
    types = field_types()
    if key not in types:
        return text  # maybe an option of the strategy: make_config checks it against the method's own list
    kind = types[key]
    if kind is bool:
        if bool_word(text) is None:
            raise ConfigError(f"--set {key}={text}: expected true or false")
        return bool_word(text)
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected a value of type {kind.__name__}") from None


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected key=value, e.g. --set lr=0.05")
        key, text = pair.split("=", 1)
        overrides[key.strip()] = parse_value(key.strip(), text)
    return overrides
