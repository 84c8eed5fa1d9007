"""Shared helpers: run the real `labkit` CLI (real torchrun, gloo on CPU) into tmp folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import psutil

REPO = Path(__file__).resolve().parent.parent


def processes_of(folder) -> list[psutil.Process]:
    """Every live process of the runs in `folder` (a run's folder or one above it): its command
    line names the folder, or its LABKIT_RUN_DIR does (every process labkit.jobs.command starts
    carries it; a rank forked from torchrun's forkserver shows only that)."""
    folder = str(folder)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            run_dir = proc.environ().get("LABKIT_RUN_DIR", "")
            if run_dir == folder or run_dir.startswith(folder.rstrip(os.sep) + os.sep) or \
                    folder in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def ranks_of(folder) -> list:
    """The live ranks of the run in `folder`: the children of the forkserver its torchrun started."""
    ranks = []
    for forkserver in [p for p in processes_of(folder) if "multiprocessing.forkserver" in " ".join(p.cmdline())]:
        ranks += [child for child in forkserver.children() if child.status() != psutil.STATUS_ZOMBIE]
    return ranks


def stragglers_killed(folder) -> list[str]:
    """What the Job had to kill after torchrun exited (launcher.log): ranks should die with it."""
    log = Path(folder) / "logs" / "launcher.log"
    return [line for line in log.read_text(errors="replace").splitlines() if "killed after torchrun" in line]


def named_semaphores() -> set[str]:
    """multiprocessing's named semaphores: one left here after a job is a leak."""
    return set(map(str, Path("/dev/shm").glob("sem.mp-*")))


def labkit_cli(*args, timeout=300, check=True, env=None) -> subprocess.CompletedProcess:
    """Run `python -m labkit.cli ARGS` as a user would, from the repository root
    (`env`: extra environment variables, e.g. LABKIT_RESULTS)."""
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"labkit {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def labkit_cli_in_process(*args) -> subprocess.CompletedProcess:
    """The same `labkit` command, run by this test process: the job itself is still a real
    agent + torchrun in its own processes; only the CLI's ~4 s of importing torch is saved."""
    import contextlib
    import io

    from labkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    proc = subprocess.CompletedProcess(["labkit", *map(str, args)], code, out.getvalue(), err.getvalue())
    if code != 0:
        raise AssertionError(f"labkit {' '.join(map(str, args))} exited {code}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_to(out, strategy, nproc, *sets, max_steps=3, strategy_name=None):
    """A short cpu-profile run through the real CLI → (result dict, checkpoint dict),
    after checking what every run must leave behind."""
    args = ["run", "--strategy", strategy, "--profile", "cpu", "--nproc", nproc, "--max-steps", max_steps, "--out", out]
    # No compute-only calibration unless a test asks for it (`calibration_steps=N` in sets):
    # it costs seconds per run and only exposed_comm_pct needs it.
    for item in ("calibration_steps=0", *sets):
        args += ["--set", item]
    proc = labkit_cli_in_process(*args)
    result = json.loads((out / "result.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    check_run(proc, result, checkpoint, strategy_name or strategy, nproc, max_steps)
    return result, checkpoint


def check_run(proc, result, checkpoint, strategy, nproc, steps):
    """A valid result.json, a loadable checkpoint, per-rank logs: the contract of every run."""
    assert "throughput" in proc.stdout
    assert result["status"] == "ok" and result["strategy"] == strategy and result["world_size"] == nproc
    summary = result["summary"]
    assert summary["throughput_img_s"] > 0 and summary["total_time_s"] > 0
    assert len(result["steps"]) == steps and {"loss", "step_s", "sync_s", "bytes_sent"} <= set(result["steps"][0])
    assert result["epochs"][-1]["val_top1"] is not None and result["env"]["torch"] == torch.__version__
    assert (summary["bytes_sent_per_step"] > 0) == (strategy != "single")  # it really communicated
    assert {"model", "optimizer", "epoch", "step"} <= set(checkpoint) and checkpoint["step"] == steps


@pytest.fixture
def train(tmp_path):
    """train(strategy, nproc, *sets) → (result, checkpoint) of a short run in this test's tmp folder."""

    def _train(strategy, nproc, *sets, max_steps=3, name=None):
        return run_to(tmp_path / (name or f"{strategy}-{nproc}"), strategy, nproc, *sets, max_steps=max_steps)

    return _train


def max_param_diff(state_a: dict, state_b: dict, include_buffers=False) -> float:
    keys = [k for k in state_a["model"] if include_buffers or "running" not in k and "num_batches" not in k]
    return max((state_a["model"][k].double() - state_b["model"][k].double()).abs().max().item() for k in keys)
