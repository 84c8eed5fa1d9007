"""Faults reported exactly, nothing left running, checkpoints that survive, resume and restart
(real torchrun, 4 gloo ranks)."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import REPO, labkit_cli, max_param_diff, processes_of, stragglers_killed

FAST = ("--set", "model=simple_cnn", "--set", "workers=0", "--set", "augment=false", "--set", "batch_size=16",
        "--set", "calibration_steps=0")


def run(out, *args, check=False, timeout=240):
    started = time.time()
    proc = labkit_cli("run", "--profile", "cpu", "--nproc", 4, "--out", out, *FAST, *args, check=check, timeout=timeout)
    return proc, time.time() - started


@pytest.mark.parametrize("kind,cause", [("raise", "injected fault on rank 2 at step 5"),
                                        pytest.param("exit", "exit code 3", marks=pytest.mark.slow), ("kill", "SIGKILL")])
def test_a_failing_rank_is_named_and_nothing_is_left(kind, cause, tmp_path):
    out = tmp_path / "run"
    proc, elapsed = run(out, "--strategy", "allreduce", "--max-steps", 40, "--set", f"fault=2:5:{kind}")
    assert proc.returncode == 1 and elapsed < 60, (proc.returncode, elapsed)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["failure"]["rank"] == 2
    assert cause in result["failure"]["exception"]
    assert "rank 2" in proc.stderr and cause in proc.stderr
    assert not processes_of(out) and not stragglers_killed(out)  # ranks ended with torchrun, unaided


def test_a_hanging_rank_is_stopped_by_the_watchdog(tmp_path):
    out = tmp_path / "run"
    proc, elapsed = run(out, "--strategy", "ddp", "--max-steps", 40, "--set", "fault=2:5:hang",
                        "--set", "watchdog_s=10")
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 1 and result["status"] == "hung"
    # rank 2 hangs before starting step 5; the others started step 5 and wait for it in the all-reduce
    assert result["failure"]["rank"] == 2
    assert result["failure"]["last_step_by_rank"] == {"0": 5, "1": 5, "2": 4, "3": 5}
    assert elapsed < 10 + 60  # start-up, the watchdog's limit, teardown
    assert not processes_of(out) and not stragglers_killed(out)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = ("import sys, torch\nfrom labkit.files import save_checkpoint\n"
              "for i in range(10**6):\n"
              "    save_checkpoint(sys.argv[1], {'step': i, 'w': torch.full((25_000_000,), float(i))})\n"
              "    print(i, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # one checkpoint is complete; the next is being written
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["w"][0].item() == checkpoint["step"] and checkpoint["w"].numel() == 25_000_000


# Tested on the manual all-reduce, which resumes bit-exactly. DDP resumes correctly too but
# not to the last bit: it reduces its first step in one bucket in parameter order and later
# steps in buckets rebuilt in backward order, and gloo's ring sums each element in an order
# set by its place in the flat buffer, so DDP's first step after a resume rounds differently
# (measured: 3e-6 after 27 more steps). 02_ddp's demo resumes DDP end to end.
RESUME_TOLERANCE = [("allreduce", 1e-6)]


@pytest.mark.parametrize("strategy,tolerance", RESUME_TOLERANCE)
def test_kill_and_resume_equals_an_uninterrupted_run(strategy, tolerance, tmp_path):
    common = ("--strategy", strategy, "--epochs", 3, "--set", "checkpoint_every=5")  # 30 steps
    _, _ = run(tmp_path / "straight", *common, check=True)
    killed, _ = run(tmp_path / "resumed", *common, "--set", "fault=1:22:kill")
    assert killed.returncode == 1
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 20
    labkit_cli("run", "--resume", tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 30
    assert max_param_diff(straight, resumed, include_buffers=True) <= tolerance
    result = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert result["status"] == "ok" and [s["step"] for s in result["steps"]] == list(range(1, 31))


def test_max_restarts_recovers_from_a_fault(tmp_path):
    proc, _ = run(tmp_path / "run", "--strategy", "allreduce", "--max-steps", 12, "--max-restarts", 1,
                  "--set", "fault=3:8:raise", "--set", "checkpoint_every=4", check=True)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and len(result["steps"]) == 12
    assert list((tmp_path / "run" / "logs").rglob("attempt_1"))  # it really restarted


def test_two_jobs_started_together_both_succeed(tmp_path):
    codes = {}

    def start(name):
        codes[name] = run(tmp_path / name, "--strategy", "ddp", "--max-steps", 4)[0].returncode

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == {"a": 0, "b": 0}
