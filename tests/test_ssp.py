"""The stale-synchronous parameter server (ssp) and the straggler (`--set straggler=RANK:FACTOR`),
under real torchrun with 4 gloo ranks: s = 0 is the dedicated `ps` exactly; with s = 2 and a
slow worker the updates really are stale, never beyond the bound, and the model still learns;
a straggler really slows its rank; a cancelled straggler run leaves nothing; bad text, one line."""

import math
import re
import statistics
import time

import psutil
import pytest

import labkit
from conftest import labkit_cli, max_param_diff, named_semaphores, processes_of, ranks_of, run_to

TIGHT = 1e-9  # float64: as in test_equivalence.py
COMMON = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "lr_warmup_steps=0", "model=simple_cnn")


def param_bytes(checkpoint) -> int:
    return sum(t.numel() * t.element_size() for t in checkpoint["model"].values())


def test_synchronous_ssp_is_the_dedicated_parameter_server(tmp_path):
    _, ps = run_to(tmp_path / "ps", "ps", 4, *COMMON, "ps_server_trains=false", max_steps=4)
    result, ssp = run_to(tmp_path / "ssp", "ssp", 4, *COMMON, "staleness=0", max_steps=4)
    assert max_param_diff(ps, ssp) < TIGHT
    assert result["method"].startswith("ssp (s=0)")
    size = param_bytes(ssp)  # simple_cnn has no buffers: every tensor is a parameter
    for step in result["steps"]:  # rank 0, the server: 3 gradients in, 3 replies out, none stale
        assert step["staleness"] == [0, 0, 0]
        assert step["bytes_received"] == step["bytes_sent"] == 3 * size and step["collectives"] == 6


def test_with_a_straggler_updates_are_stale_within_the_bound_and_it_learns(tmp_path):
    # 2 epochs of 6 steps (640 images ÷ 3 workers ÷ 32), worker rank 1 three times slower
    result, checkpoint = run_to(tmp_path / "ssp", "ssp", 4, "augment=false", "workers=0", "model=simple_cnn",
                                "batch_size=32", "epochs=2", "lr_warmup_steps=0", "staleness=2", "straggler=1:3",
                                max_steps=12)
    staleness = [value for step in result["steps"] for value in step["staleness"]]
    assert len(staleness) == 3 * 12  # every gradient of every worker, once
    assert max(staleness) <= 2 and min(staleness) >= 0, staleness
    assert any(value > 0 for value in staleness), "the straggler made nothing asynchronous"
    size = param_bytes(checkpoint)
    assert all(step["bytes_received"] == 3 * size for step in result["steps"])
    # every gradient got exactly one reply, though not always in the server's same step
    assert sum(step["bytes_sent"] for step in result["steps"]) == 3 * 12 * size
    first, last = result["epochs"]
    assert last["train_loss"] < first["train_loss"] and last["val_loss"] < math.log(10), result["epochs"]


def test_a_straggler_slows_its_rank_by_its_factor(tmp_path):
    """DDP with rank 1 three times slower, read from the run's own timeline (every rank's
    phases): rank 1 ends its compute phase last in every step, and that phase is ≈ 3 × its
    own forward + backward. That lasts from its start until the others' all-reduce, hooked
    into their backward, has its last bucket: the end of rank 1's backward, before its sleep.
    Within one run, not against a run without it: on 2 shared cores a second run's compute
    differs by its contention (4 ranks then compute together; here rank 1 often alone), and
    pairs of runs measured 1.3-3.6 ×. Within a run: 2.7-4.3 × per step at 4 ranks (medians of
    4 steps in 3 runs 2.9-3.5), 2.9-3.5 × at 2."""
    result, _ = run_to(tmp_path / "slow", "ddp", 4, "model=simple_cnn", "workers=0", "augment=false",
                       "batch_size=16", "timeline_steps=6", "straggler=1:3", max_steps=10)
    compute = {(e["rank"], e["step"]): e for e in result["timeline"] if e["phase"] == "compute_s"}
    ratios = []
    for step in sorted({step for _, step in compute}):
        slow, others = compute[(1, step)], [compute[(rank, step)] for rank in (0, 2, 3)]
        assert slow["end"] > max(e["end"] for e in others)  # the others wait for it
        own = statistics.median(e["end"] for e in others) - slow["start"]  # its forward + backward
        ratios.append((slow["end"] - slow["start"]) / own)
    assert len(ratios) == 6 and 2.5 < statistics.median(ratios) < 5.0, ratios  # 3 ×, plus what 2 shared cores add (CI saw 3.75)


def test_a_cancelled_straggler_run_leaves_nothing(tmp_path):
    semaphores = named_semaphores()
    out = tmp_path / "run"
    job = labkit.launch(profile="cpu", strategy="ssp", nproc=4, epochs=100, model="simple_cnn", workers=0,
                        calibration_steps=0, straggler="1:3", out_dir=str(out))
    deadline = time.time() + 180
    while not job.progress() and time.time() < deadline:
        time.sleep(0.5)
    assert job.progress(), "no step was made"
    family = psutil.Process(job.handle.pid).children(recursive=True)
    assert len(ranks_of(out)) == 4
    job.cancel()
    assert job.status == "interrupted"
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not processes_of(out) and not named_semaphores() - semaphores


@pytest.mark.parametrize("text", ["1", "1:x", "9:2", "1:0.5", "-1:2", "1:3:4", "1:nan", "1:inf"])
def test_bad_straggler_text_gets_one_line(text, tmp_path):
    with pytest.raises(labkit.ConfigError, match=re.escape(f"straggler='{text}': expected RANK:FACTOR")) as error:
        labkit.make_config("cpu", strategy="ddp", nproc=4, straggler=text, out_dir=str(tmp_path / "x"))
    assert "\n" not in str(error.value) and not (tmp_path / "x").exists()


def test_bad_straggler_text_on_the_command_line(tmp_path):
    proc = labkit_cli("run", "--strategy", "ddp", "--profile", "cpu", "--out", tmp_path / "x", "--set", "straggler=2",
                      check=False)
    assert proc.returncode != 0 and "straggler='2': expected RANK:FACTOR" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr


@pytest.mark.parametrize("sets, message", [
    (dict(nproc=1), "needs a server and a worker"),
    (dict(staleness=-1), "staleness=-1"),
    (dict(checkpoint_every=2), "checkpoints at epoch ends only"),
])
def test_bad_ssp_settings_get_one_line(sets, message, tmp_path):
    with pytest.raises(labkit.ConfigError, match=re.escape(message)) as error:
        labkit.make_config("cpu", strategy="ssp", **{"nproc": 4, **sets}, out_dir=str(tmp_path / "x"))
    assert "\n" not in str(error.value)


def test_a_transient_straggler_is_one_data_rank_a_pass_the_same_on_every_rank(monkeypatch):
    """straggler=any:F: each forward + backward pass one rank with data is slowed, drawn from the
    seed and the pass, so every rank agrees which one (a dedicated server is never drawn)."""
    import itertools
    from types import SimpleNamespace

    from labkit.config import parse_straggler
    from labkit.training import faults

    assert parse_straggler("any:3", 4) == (None, 3.0)
    cfg = SimpleNamespace(straggler="any:3", nproc=4, data_ranks=3, seed=0)
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    chosen = []
    for rank in range(4):  # each rank is its own process: its own pass count from 1
        monkeypatch.setattr(faults, "_calls", itertools.count(1))
        slept.clear()
        for _ in range(200):
            faults.straggle(cfg, rank, 0.01)
        chosen.append(len(slept))
    assert chosen[0] == 0 and sum(chosen) == 200 and min(chosen[1:]) > 40  # each worker slowed about a third
