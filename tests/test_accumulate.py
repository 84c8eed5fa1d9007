"""Gradient accumulation (`--set accumulate=K`): K micro-batches of batch_size per rank, one
synchronization per optimizer step, make the update of one batch K times larger.

Real torchrun, 4 gloo ranks, float64 on simple_cnn (no BatchNorm: its statistics would see
4 images where the large batch has 8, a real difference, not a bug). A micro-batch of 4
followed by the next 4 of the same shard are the images one batch of 8 holds, so the runs
must agree to rounding (< 1e-9, as in test_equivalence), while a run that ignored K (a step
on 4 images) lands ≥ 1e-4 away. The bytes each step sends must be those of one
synchronization: a method that reduced every micro-batch would send K times as much."""

import subprocess
import sys
import textwrap

import json

import pytest

from conftest import REPO, max_param_diff, run_to
from labkit.cli import main

TIGHT = 1e-9  # float64: rounding is ~1e-15, a wrong update ≥ 1e-4
COMMON = ("augment=false", "workers=0", "dtype=float64", "lr_warmup_steps=0", "model=simple_cnn")
STEPS = 3


@pytest.fixture(scope="module")
def large_batch(tmp_path_factory):
    """The reference: DDP on batch_size=8 per rank, no accumulation (made once for the module)."""
    return run_to(tmp_path_factory.mktemp("large") / "ddp-8", "ddp", 4, *COMMON, "batch_size=8", max_steps=STEPS)


def accumulated(tmp_path, strategy, *sets):
    return run_to(tmp_path / f"{strategy}-4x2", strategy, 4, *COMMON, "batch_size=4", "accumulate=2", *sets,
                  max_steps=STEPS)


def same_wire_per_step(result, reference):
    """Every step all-reduced what the K=1 run's step did: one synchronization (the loop counts DDP's
    small broadcast in step 2 too, when it rebuilds its buckets: not a synchronization)."""
    def reduced(run):
        return [s["ops"].get("all_reduce", [0, 0])[1] for s in run["steps"]]
    return reduced(result) == reduced(reference)


def test_ddp_accumulating_two_micro_batches_equals_a_batch_twice_as_large(tmp_path, large_batch):
    ref_result, ref = large_batch
    result, trained = accumulated(tmp_path, "ddp")
    assert max_param_diff(ref, trained) < TIGHT
    assert result["global_batch"] == ref_result["global_batch"] == 32  # 4 images × 4 ranks × 2 micro-batches
    assert result["config"]["batch_size"] == 4 and len(result["steps"]) == STEPS
    assert [s["loss"] for s in result["steps"]] == pytest.approx([s["loss"] for s in ref_result["steps"]], rel=1e-12)
    assert same_wire_per_step(result, ref_result)
    # and K really changed the update: a plain batch_size=4 run (every step 4 images) ends elsewhere
    _, small = run_to(tmp_path / "ddp-4", "ddp", 4, *COMMON, "batch_size=4", max_steps=STEPS)
    assert max_param_diff(ref, small) > 1e-4


@pytest.mark.parametrize("strategy,sets", [
    ("allreduce", ()),  # communicates in sync_gradients, after the last micro-batch: nothing to hold back
    ("overlap", ("bucket_mb=0.02",)),  # hooks inside backward, held back by its no_sync (several buckets)
])
def test_hand_written_methods_accumulate_like_ddp(tmp_path, large_batch, strategy, sets):
    ref_result, ref = large_batch
    result, trained = accumulated(tmp_path, strategy, *sets)
    assert max_param_diff(ref, trained) < TIGHT, strategy
    # the bytes of one gradient synchronization per step, as DDP's K=1 step (same numel, float64)
    assert same_wire_per_step(result, ref_result), (result["steps"][0], ref_result["steps"][0])


def test_a_dedicated_server_accumulates_on_its_workers(tmp_path):
    """ps with a dedicated server (3 workers of 4 ranks, 2 micro-batches of 4) = DDP on 3 ranks
    at 8: the server takes one empty group a step and still steps once per optimizer step."""
    _, ddp3 = run_to(tmp_path / "ddp3-8", "ddp", 3, *COMMON, "batch_size=8", max_steps=STEPS)
    result, ps = accumulated(tmp_path, "ps", "ps_server_trains=false")
    assert max_param_diff(ddp3, ps) < TIGHT and result["global_batch"] == 24


def test_a_restart_mid_epoch_skips_k_batches_per_step_done(tmp_path, large_batch):
    """A fault before step 3 restarts the ranks from the step-2 checkpoint: they must skip
    2 steps × 2 micro-batches of their shard (skipping 2 would train step 3 on step 2's
    second half) and end where the uninterrupted large-batch run ends."""
    _, ref = large_batch
    result, resumed = accumulated(tmp_path, "allreduce", "checkpoint_every=1", "fault=1:3:raise", "max_restarts=1")
    assert list((tmp_path / "allreduce-4x2" / "logs").rglob("attempt_1"))  # it really restarted
    assert [s["step"] for s in result["steps"]] == [1, 2, 3]
    assert max_param_diff(ref, resumed) < TIGHT


def test_ddp_reduces_once_per_step_by_its_own_count(tmp_path):
    """DDP's own iteration counter (its logger counts the backward passes that reduced) after
    3 steps of 2 micro-batches through the real train_step. One gloo rank, no torchrun:
    this checks the no_sync wiring (forward inside it too), which the equivalence cannot see —
    reducing both micro-batches would average to the same gradients."""
    script = textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from labkit.config import RunConfig
        from labkit.strategies.ddp import TorchDDP
        from labkit.training.models import build_model
        from labkit.training.step import train_step
        from labkit.training.timing import StepTimer
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())  # one rank: no network
        cfg = RunConfig(model="simple_cnn", accumulate=2, batch_size=2, dtype="float32", amp="off")
        model = build_model(cfg.model, cfg.num_classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        strategy = TorchDDP(cfg, 0, 1)
        ddp = strategy.prepare(model, optimizer)
        scaler, timer = torch.amp.GradScaler("cpu", enabled=False), StepTimer(torch.device("cpu"))
        timer.start()
        batch = lambda: (torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,)))
        for _ in range(3):
            train_step(ddp, iter([batch(), batch()]), strategy, optimizer, scaler, timer, cfg, torch.device("cpu"))
            timer.stop()
        print("ITERATIONS", ddp._get_ddp_logging_data()["iteration"])
        dist.destroy_process_group()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The logger counts at each reducing forward the reducing backward passes before it: 2 at the
    # third step's last forward; 5 if every micro-batch reduced (6 forwards).
    assert "ITERATIONS 2" in proc.stdout, proc.stdout


HOOKED = '''
import torch.distributed as dist
from labkit.strategies.base import About, Strategy, nbytes


class Hooked(Strategy):
    """All-reduces each gradient from a hook inside backward, with no no_sync to hold it back."""
    about = About(overlaps_backward=True)

    def prepare(self, model, optimizer):
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda p: dist.all_reduce(p.grad))
        return model
'''


@pytest.mark.parametrize("sets,message", [
    (["accumulate=0"], "accumulate must be at least 1 (got 0)"),
    (["accumulate=2", "batch_size=100"], "batch_size=100 per rank × 4 ranks × accumulate=2 needs 800 training images"),
])
def test_a_refused_accumulation_is_one_clear_line(tmp_path, capsys, sets, message):
    out = tmp_path / "run"
    code = main(["run", "--profile", "cpu", "--strategy", "ddp", *[f"--set={s}" for s in sets], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith(("labkit: error:", "labkit run: error:")), err
    assert not out.exists()  # refused before anything was written


def test_a_method_that_communicates_in_backward_without_no_sync_stops_at_its_first_micro_batch(tmp_path, capsys):
    """The contract's own no_sync (strategies/base.py) refuses for a method that declares
    overlaps_backward: each micro-batch's backward would reduce. The run ends in one line."""
    (tmp_path / "hooked.py").write_text(HOOKED)
    out = tmp_path / "run"
    code = main(["run", "--profile", "cpu", "--strategy", f"{tmp_path / 'hooked.py'}:Hooked", "--nproc", "2",
                 "--max-steps", "1", "--set", "accumulate=3", "--out", str(out)])
    captured = capsys.readouterr()
    assert code != 0
    assert "Hooked communicates inside backward and has no no_sync(model)" in captured.out + captured.err
    assert json.loads((out / "result.json").read_text())["status"] == "failed"


def test_the_recipes_global_batch_is_kept_and_the_linear_lr_follows_k():
    from labkit.profiles import make_config

    recipe = make_config("cpu", strategy="ddp", accumulate=2)  # the cpu profile's global batch of 64
    assert (recipe.batch_size, recipe.global_batch) == (8, 64)  # 8 images × 4 ranks × 2 micro-batches
    larger = make_config("cpu", strategy="ddp", batch_size=16, accumulate=4, lr=0.0)  # linear scaling rule
    assert larger.global_batch == 256 and larger.learning_rate == pytest.approx(0.1 * 256 / 256)
