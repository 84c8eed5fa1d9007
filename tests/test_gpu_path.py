"""The GPU path (issue 15), proved wherever the CPU can prove it — no test here needs a GPU.

- channels_last: every method runs with it on gloo and ends with DDP's parameters (float64);
  the parameter servers' pulls keep the layout (checked on every rank after every pull);
- checkpoints restore whatever device saved them: loaded onto the CPU, RNG states included;
- one rank per GPU, whatever the backend, refused before launch with one line;
- amp=bf16 refused on a GPU without native bfloat16; PowerSGD and ps_sharded refusals;
- the synthetic profile draws a batch per rank and step (a real run, checked against a
  hand-computed data-parallel update);
- StepTimer's CUDA path (events read once per step), driven by stand-in events;
- `make gpu-check` without a GPU: one line, exit 0; its skip lines and table.
"""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, labkit_cli_in_process, max_param_diff, run_to

from labkit import hardware
from labkit.config import ConfigError, RunConfig
from labkit.profiles import make_config
from labkit.strategies.base import flatten, unflatten_into
from labkit.training import checkpoint
from labkit.training.data import SyntheticLoader, build_loaders
from labkit.training.models import build_model
from labkit.training.timing import StepTimer

TIGHT = 1e-9  # float64: rounding ~1e-15, a wrong update ≥ 1e-4 (as in test_equivalence)
CL = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "model=simple_cnn", "channels_last=true")
LAYOUT = str(REPO / "tests" / "layout_checked.py")


# -- channels_last on every method ---------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_channels_last(tmp_path_factory):
    """DDP with channels_last, 2 gloo ranks, float64: the reference of this module."""
    _, ddp = run_to(tmp_path_factory.mktemp("cl") / "ddp", "ddp", 2, *CL, max_steps=3)
    return ddp


def run_file_strategy(out, spec, nproc, *sets, max_steps=3):
    """A short cpu-profile run of a method given as FILE:CLASS → its checkpoint."""
    args = ["run", "--strategy", spec, "--profile", "cpu", "--nproc", nproc, "--max-steps", max_steps, "--out", out]
    for item in ("calibration_steps=0", *sets):
        args += ["--set", item]
    labkit_cli_in_process(*args)
    assert json.loads((out / "result.json").read_text())["status"] == "ok"
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("strategy, sets", [
    ("allreduce", ()),
    ("bucketed", ("bucket_mb=0.02",)),  # several buckets
    ("overlap", ("bucket_mb=0.02",)),
    ("ring", ()),
    (f"{LAYOUT}:CheckedPS", ()),  # ps, raising on any rank whose weights lost channels_last
    (f"{LAYOUT}:CheckedShardedServer", ()),
], ids=["allreduce", "bucketed", "overlap", "ring", "ps-layout-checked", "ps_sharded-layout-checked"])
def test_channels_last_runs_and_matches_ddp(tmp_path, ddp_channels_last, strategy, sets):
    """parameters_to_vector's .view(-1) fails on a channels_last weight on CPU exactly as on
    CUDA, so each of these runs reaches the code the GPU would."""
    if ":" in strategy:
        other = run_file_strategy(tmp_path / "run", strategy, 2, *CL, *sets)
    else:
        _, other = run_to(tmp_path / "run", strategy, 2, *CL, *sets, max_steps=3)
    assert max_param_diff(ddp_channels_last, other) < TIGHT, strategy


def test_channels_last_single_on_the_global_batch_matches_ddp(tmp_path, ddp_channels_last):
    """No BatchNorm in simple_cnn: one process on the global batch (2 × 4) = DDP on 2 ranks;
    and DDP really trained (its weights left their initial values)."""
    _, single = run_to(tmp_path / "single", "single", 1, *[s for s in CL if not s.startswith("batch_size")],
                       "batch_size=8", max_steps=3)
    assert max_param_diff(ddp_channels_last, single) < TIGHT
    torch.manual_seed(0)  # the worker's seed: the initial weights every rank starts from
    initial = {"model": build_model("simple_cnn", 10).double().state_dict()}
    assert max_param_diff(ddp_channels_last, initial) > 1e-4


def test_flatten_and_unflatten_keep_channels_last():
    """The parameter servers' flatten / unflatten_into: NCHW order on the wire (as every rank
    expects), the layout kept on the way back. parameters_to_vector cannot do either."""
    weight = torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(8)
    flat = flatten([weight, bias])
    assert torch.equal(flat[:weight.numel()], weight.reshape(-1))  # logical (NCHW) order
    with pytest.raises(RuntimeError):
        torch.nn.utils.parameters_to_vector([weight, bias])  # .view(-1) on channels_last
    unflatten_into(flat * 2, [weight, bias])
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(weight.reshape(-1), flat[:weight.numel()] * 2) and torch.equal(bias, flat[weight.numel():] * 2)


# -- refusals, each one line -----------------------------------------------------------------

def test_powersgd_refuses_channels_last_in_one_line(capsys):
    from labkit.cli import main

    code = main(["run", "--strategy", "powersgd", "--profile", "cpu", "--nproc", "2", "--set", "channels_last=true"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("labkit: error: powersgd") and "channels_last" in lines[0]


@pytest.mark.parametrize("strategy", ["powersgd", "ps_sharded", "ps"])
def test_fp16_amp_refused_where_a_scaler_cannot_work(tmp_path, strategy):
    with pytest.raises(ConfigError, match="amp=fp16") as error:
        make_config("cpu", strategy=strategy, nproc=2, amp="fp16", out_dir=str(tmp_path))
    assert "\n" not in str(error.value)


@pytest.fixture
def one_gpu(monkeypatch, tmp_path):
    """This process believes it sees one GPU (nothing touches CUDA: only the checks run)."""
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    monkeypatch.setattr(hardware, "gpu_names", lambda: ["Tesla V100-SXM2-16GB"])
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path))


@pytest.mark.parametrize("overrides", [{}, {"backend": "gloo"}])
def test_more_ranks_than_gpus_is_refused_whatever_the_backend(one_gpu, overrides):
    """A rank past the last GPU would fail with 'invalid device ordinal' (with gloo too)."""
    with pytest.raises(ConfigError) as error:
        make_config("synthetic", nproc=2, **overrides)
    message = str(error.value)
    assert "\n" not in message and "--nproc 1" in message and "--profile cpu" in message
    assert "backend=gloo" not in message  # the old advice, which crashed
    assert make_config("synthetic").nproc == 1  # one rank per GPU by default


def test_bf16_refused_without_native_bfloat16(one_gpu, monkeypatch):
    import labkit.profiles

    monkeypatch.setattr(labkit.profiles, "bf16_native", lambda: False)
    with pytest.raises(ConfigError, match="no native bfloat16.*amp=fp16") as error:
        make_config("synthetic", amp="bf16")
    assert "\n" not in str(error.value) and "V100" in str(error.value)
    monkeypatch.setattr(labkit.profiles, "bf16_native", lambda: True)
    assert make_config("synthetic", amp="bf16").amp == "bf16"


def test_bench_waits_for_the_gpu_lock_and_checks_ranks(one_gpu, tmp_path, monkeypatch):
    from labkit.measure import bench

    with pytest.raises(ConfigError, match="--nproc 1"):
        bench.check_ranks(2)
    from labkit.jobs.command import Command, command_line

    lock = bench.gpu_lock()
    assert lock == tmp_path / ".cuda.lock"
    command = Command("labkit.measure.collectives", ["x"], nproc=1, run_dir=tmp_path)
    queued = command_line(dataclasses.replace(command, queue_lock=lock))
    assert queued[1].endswith("agent.py") and queued[3] == str(lock) and queued[6:] == command_line(command)
    monkeypatch.setattr(hardware, "gpu_count", lambda: 0)
    assert bench.gpu_lock() is None


# -- checkpoints ------------------------------------------------------------------------------

def test_checkpoint_restores_onto_the_cpu_whatever_saved_it(tmp_path, monkeypatch):
    """On a GPU the old load (map_location=device) moved the saved RNG states to cuda:N and
    torch.set_rng_state takes only CPU tensors: every resume crashed. The load now maps
    everything to the CPU — RNG states stay CPU tensors — and load_state_dict copies
    weights and optimizer state to wherever the model lives."""
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    checkpoint.save(tmp_path / "checkpoint.pt", *checkpoint.whole_state(model, optimizer), scaler,
                    checkpoint.TrainState(global_step=1), {})
    expected = torch.rand(5)  # what the RNG draws next after the save

    asked = []
    real_load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path, **kw: asked.append(kw) or real_load(path, **kw))
    torch.manual_seed(1234)
    fresh = build_model("simple_cnn", 10)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    checkpoint.restore_model(saved, fresh)
    state = checkpoint.restore(saved, tmp_path / "checkpoint.pt", fresh_optimizer, scaler)
    assert [str(kw.get("map_location")) for kw in asked] == ["cpu"]
    assert state.global_step == 1 and torch.equal(torch.rand(5), expected)  # the RNG continues
    assert max_param_diff({"model": model.state_dict()}, {"model": fresh.state_dict()}) == 0
    momentum = [fresh_optimizer.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(m.device.type == "cpu" for m in momentum) and momentum[0].abs().sum() > 0


# -- data -----------------------------------------------------------------------------------

def test_synthetic_batches_differ_by_rank_and_step_and_repeat_exactly():
    cfg = RunConfig(dataset="synthetic", batch_size=2, image_size=8, num_classes=10, synthetic_steps=3)
    rank0, rank1 = SyntheticLoader(cfg, torch.device("cpu"), 0), SyntheticLoader(cfg, torch.device("cpu"), 1)
    assert not torch.equal(rank0.batch(0)[0], rank1.batch(0)[0])  # ranks see different data
    assert not torch.equal(rank0.batch(0)[0], rank0.batch(1)[0])  # a new batch each step
    again = SyntheticLoader(cfg, torch.device("cpu"), 1)
    assert all(torch.equal(a, b) for a, b in zip(again.batch(4), rank1.batch(4)))  # reproducible
    resumed = list(rank1.epoch(1, skip_steps=2))  # a resume skips without drawing
    assert len(resumed) == 1 and torch.equal(resumed[0][0], rank1.batch(5)[0])


def by_hand(cfg, batch_of) -> dict:
    """The parameters after a by-hand 2-rank data-parallel update, rank r's batch at step t
    being batch_of(r, t): the worker's seed, model, optimizer and schedule; DDP's average."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.num_classes).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    for step in range(cfg.synthetic_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step + 1)
        optimizer.zero_grad()
        for rank in range(2):
            images, labels = batch_of(rank, step)
            (F.cross_entropy(model(images.double()), labels) / 2).backward()
        optimizer.step()
    return {"model": model.state_dict()}


def test_synthetic_run_trains_each_rank_on_its_own_batch(tmp_path):
    """A real 2-rank DDP run on the synthetic profile (on the CPU) ends where a by-hand
    update on each rank's own batch ends — and far from where it would with one batch for
    both ranks (the old loader), or one batch for every step."""
    out = tmp_path / "synthetic"
    labkit_cli_in_process("run", "--strategy", "ddp", "--profile", "synthetic", "--nproc", 2, "--out", out,
                          *[f"--set={s}" for s in ("device=cpu", "backend=gloo", "model=simple_cnn", "image_size=16",
                                                   "num_classes=10", "batch_size=4", "dtype=float64", "synthetic_steps=2",
                                                   "calibration_steps=0")])
    cfg = RunConfig.load(out / "config.json")
    loaders = [SyntheticLoader(cfg, torch.device("cpu"), r) for r in range(2)]
    trained = torch.load(out / "checkpoint.pt", weights_only=True)
    assert max_param_diff(trained, by_hand(cfg, lambda r, t: loaders[r].batch(t))) < TIGHT
    assert max_param_diff(trained, by_hand(cfg, lambda r, t: loaders[0].batch(t))) > 1e-6
    assert max_param_diff(trained, by_hand(cfg, lambda r, t: loaders[r].batch(0))) > 1e-6


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # none are started here
def test_validation_loader_uses_fewer_workers_and_none_persistent(tmp_path):
    cfg = make_config("cpu", workers=16, out_dir=str(tmp_path))
    train, val = build_loaders(cfg, 0, 4, 0, 4, torch.device("cpu"))  # loaders start no worker until iterated
    assert train.num_workers == 16 and train.persistent_workers
    assert val.num_workers == 4 and not val.persistent_workers


# -- GPU timing, with stand-in CUDA events ---------------------------------------------------

class FakeEvent:
    """torch.cuda.Event's timing surface, on a GPU clock the test moves by hand."""
    gpu_ms = 0.0
    syncs = 0

    def __init__(self, enable_timing=False):
        assert enable_timing

    def record(self, stream=None):
        self.at = FakeEvent.gpu_ms

    def synchronize(self):
        FakeEvent.syncs += 1

    def elapsed_time(self, end):
        return end.at - self.at


def test_cuda_step_timer_reads_events_once_per_step(monkeypatch):
    """Each phase is the GPU time between the events around it (not the host's time), nothing
    synchronizes the device, and one wait per step reads them; intervals tile the step."""
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("a device-wide synchronize"))
    FakeEvent.syncs = 0
    timer = StepTimer(torch.device("cuda"))
    timer.record_intervals = True
    timer.start()
    for step in range(2):
        for phase, ms in (("data_s", 2), ("compute_s", 10), ("sync_s", 3), ("optimizer_s", 1), ("sync_s", 4)):
            FakeEvent.gpu_ms += ms
            timer.mark(phase)
        record = timer.stop()
        assert record == pytest.approx({"data_s": 0.002, "compute_s": 0.010, "sync_s": 0.007, "optimizer_s": 0.001,
                                        "step_s": 0.020})
    assert FakeEvent.syncs == 2
    intervals = [i for i in timer.intervals if i[0] == 2]
    assert [i[1] for i in intervals] == ["data_s", "compute_s", "sync_s", "optimizer_s", "sync_s"]
    assert [round(end - start, 6) for _, _, start, end in intervals] == [0.002, 0.010, 0.003, 0.001, 0.004]
    assert all(a[3] == b[2] for a, b in zip(intervals, intervals[1:]))  # back to back, on the wall clock


# -- make gpu-check ----------------------------------------------------------------------------

def test_gpu_check_without_a_gpu_says_so_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "labkit.measure.gpu_check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().count("\n") == 0 and "GPU" in proc.stdout, proc
    assert labkit_cli_in_process("machine", "--gpu").stdout == proc.stdout


def test_gpu_check_skips_with_the_reason_and_tabulates(one_gpu, tmp_path, monkeypatch):
    import labkit.profiles
    from labkit.measure import gpu_check

    monkeypatch.setattr(labkit.profiles, "bf16_native", lambda: True)
    assert {(n, s) for _, s, n, _ in gpu_check.plan(["ps", "ddp"], 4)} == {(1, "ps"), (1, "ddp"), (4, "ps"), (4, "ddp")}
    base = dict(epochs=1, synthetic_steps=3, timing_warmup_steps=1)
    lines = gpu_check.plan(["ps"], 1) + [("powersgd bf16+cl", "powersgd", 1, gpu_check.VARIANTS["bf16+cl"])]
    skipped = [gpu_check.run_line(check, s, n, o, base, tmp_path) for check, s, n, o in lines]
    assert [line.result for line in skipped] == ["skip", "skip", "skip"]  # no run started
    assert "--nproc 2" in skipped[0].note and "channels_last" in skipped[2].note
    good = gpu_check.Line("single bf16+cl", 1, "pass", figures={"img_s": 2500.0, "step_ms": 25.6})
    assert gpu_check.hold_to_target(good, "NVIDIA H100 80GB HBM3").result == "FAIL"
    text = gpu_check.table(skipped + [good])
    assert text.count("\n") == 5 and "| 2,500 | 25.6 |" in text and "skip: strategy 'ps' needs" in text


def test_gpu_check_main_flow_with_stand_in_runs(one_gpu, tmp_path, monkeypatch, capsys):
    """The whole `make gpu-check` on a pretend H100, each run replaced by a result of the
    shape result.json has: every method line, the harness and the resume are tabulated,
    a line below its target fails, the table lands in results/bench/gpu_check.md."""
    import labkit
    import labkit.profiles
    from labkit.measure import bench, gpu_check

    monkeypatch.setattr(hardware, "gpu_names", lambda: ["NVIDIA H100 80GB HBM3"])
    monkeypatch.setattr(hardware, "nccl_version", lambda: "2.27.7")
    monkeypatch.setattr(labkit.profiles, "bf16_native", lambda: True)
    ran = []

    def fake_run(cfg, progress=True):
        ran.append(cfg)
        img_s = 3000.0 if cfg.amp == "bf16" else 1000.0
        steps = [{"loss": 2.0}] * cfg.synthetic_steps
        return {"status": "ok", "config": cfg.to_dict(), "steps": steps,
                "summary": {"throughput_img_s": img_s, "step_time_median_s": 64 / img_s, "sync_share_pct": 0.0,
                            "exposed_comm_pct": None, "bytes_sent_per_step": 0, "collectives_per_step": 0}}

    monkeypatch.setattr(labkit, "run", fake_run)
    monkeypatch.setattr(bench, "harness", lambda *a, **k: {"ratio_of_medians": 0.9, "labkit_img_s": [2900.0],
                                                           "plain_img_s": [3200.0]})
    assert gpu_check.main(["--steps", "4", "--strategies", "single,ps,powersgd"]) == 1  # the harness line fails
    table = (tmp_path / "bench" / "gpu_check.md").read_text()
    assert table.startswith("1 × NVIDIA H100 80GB HBM3") and table.count("| pass") == 4  # single ×2, powersgd fp32, resume
    assert table.count("| skip") == 3 and "| FAIL: ratio 0.900" in table and "| kill-and-resume ddp | 1 |" in table
    resume = ran[-1]
    assert (resume.fault, resume.max_restarts, resume.checkpoint_every) == ("0:3:kill", 1, 2)
    assert all(cfg.synthetic_steps == 4 and cfg.device == "cuda" for cfg in ran) and len(ran) == 4
    assert "1 failed" in capsys.readouterr().out.splitlines()[-1]
