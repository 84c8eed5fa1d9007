"""Background jobs: launch returns at once, cancel and Ctrl-C leave no process, failures name the rank."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

import labkit
from conftest import REPO, named_semaphores, ranks_of


def wait_for_progress(job, timeout=120):
    deadline = time.time() + timeout
    while not job.progress() and time.time() < deadline:
        assert job.status in ("queued", "running")
        time.sleep(0.5)
    assert job.progress(), "no step was made"


def assert_all_gone(procs, timeout=15):
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[(p.pid, p.cmdline()[:4]) for p in alive]}"


def test_launch_returns_at_once_and_cancel_leaves_nothing(tmp_path):
    semaphores = named_semaphores()
    job = labkit.launch(profile="cpu", strategy="ddp", nproc=2, epochs=1, out_dir=str(tmp_path / "run"))
    assert job.status in ("queued", "running") and not (tmp_path / "run" / "result.json").exists()
    wait_for_progress(job)
    family = psutil.Process(job.handle.pid).children(recursive=True)
    assert len(ranks_of(tmp_path / "run")) == 2
    job.cancel()
    assert job.status == "interrupted"
    assert_all_gone(family)
    assert not named_semaphores() - semaphores  # the resource tracker unlinked them
    with pytest.raises(labkit.RunFailed, match="interrupted"):
        job.result()


def test_ctrl_c_during_wait_leaves_nothing(tmp_path):
    # A shell that starts a job in the background makes it ignore SIGINT (and Python then
    # never raises KeyboardInterrupt); a terminal or a Jupyter kernel interrupt delivers it.
    script = ("import labkit, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"job = labkit.launch(profile='cpu', strategy='allreduce', nproc=2, epochs=1, out_dir={str(tmp_path / 'run')!r})\n"
              "print(job.handle.pid, flush=True)\n"
              "job.wait()\n")
    waiter = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    agent_pid = int(waiter.stdout.readline())
    deadline = time.time() + 120
    while not (tmp_path / "run" / "progress.jsonl").exists() and time.time() < deadline:
        time.sleep(0.5)
    family = psutil.Process(agent_pid).children(recursive=True) + [psutil.Process(agent_pid)]
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(timeout=60) != 0  # KeyboardInterrupt propagates after the teardown
    assert_all_gone(family)


def test_cancel_after_the_run_ended_keeps_its_result(tmp_path):
    """A cancel that comes after the run has ended, before anything looked at the job (a
    notebook's "stop" cell run late), must not turn an ok result into "interrupted"."""
    job = labkit.launch(profile="cpu", strategy="single", max_steps=1, calibration_steps=0, workers=0,
                        model="simple_cnn", out_dir=str(tmp_path / "run"))
    job.handle.wait(timeout=180)  # ended; no poll(), no status read
    job.cancel()
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"
    assert job.status == "ok" and job.result()["status"] == "ok"


def test_wait_shows_progress_past_the_runs_own_timing_warm_up(tmp_path, monkeypatch):
    """The live display leaves out the run's own warm-up steps (not the default 2) when it
    counts disturbed steps: Job.wait hands it the run's timing_warmup_steps."""
    from labkit.jobs import progress

    real, made = progress.ProgressDisplay, []

    def recording(name, **kwargs):
        made.append(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(progress, "ProgressDisplay", recording)
    job = labkit.launch(profile="cpu", strategy="single", max_steps=1, calibration_steps=0, workers=0,
                        model="simple_cnn", timing_warmup_steps=0, out_dir=str(tmp_path / "run"))
    job.wait()
    assert made == [{"timing_warmup_steps": 0}] and job.status == "ok"


def test_failing_rank_is_named_with_its_traceback(tmp_path):
    job = labkit.launch(profile="cpu", strategy="ddp", nproc=2, max_steps=6, fault="1:2:raise",
                        out_dir=str(tmp_path / "run"))
    with pytest.raises(labkit.RunFailed) as error:
        job.result()
    message = str(error.value)
    assert "rank 1" in message and "rank 1: RuntimeError: injected fault on rank 1 at step 2" in message and "inject_fault" in message
    assert job.status == "failed"


# What torch's launcher reported (ChildFailedError.failures, as labkit.jobs.torchrun writes
# them) after a rank aborted in C++ (a gloo collective mismatch): its "first observed failure"
# is a rank the agent was already stopping with SIGTERM.
def aborted_report(error_file) -> list[dict]:
    return [{"rank": 0, "local_rank": 0, "pid": 3329, "exit_code": -6, "signal": "SIGABRT", "timestamp": 20,
             "error_file": None},
            {"rank": 1, "local_rank": 1, "pid": 3330, "exit_code": -15, "signal": "SIGTERM", "timestamp": 10,
             "error_file": str(error_file)},
            {"rank": 2, "local_rank": 2, "pid": 3331, "exit_code": -15, "signal": "SIGTERM", "timestamp": 20,
             "error_file": None}]


def test_the_cause_is_the_rank_that_failed_by_itself_not_a_casualty(tmp_path):
    from labkit.jobs.failures import read_failure

    (tmp_path / "err.json").write_text('{"message": {"message": "RuntimeError: Connection reset by peer"}}')
    (tmp_path / "failures.json").write_text(json.dumps(aborted_report(tmp_path / "err.json")))
    rank0 = tmp_path / "run-id" / "attempt_0" / "0"
    rank0.mkdir(parents=True)
    (rank0 / "stderr.log").write_text("terminate called after throwing an instance of 'gloo::EnforceNotMet'\n"
                                      "  what():  Received data size doesn't match expected size.\n"
                                      "Fatal Python error: Aborted\n")
    failure = read_failure(tmp_path)
    assert failure["rank"] == 0 and failure["exit_code"] == -6 and failure["signal"] == "SIGABRT"
    assert failure["exception"] == "killed by signal 6 (SIGABRT): what():  Received data size doesn't match expected size."


@pytest.mark.parametrize("cause_rank_raised", [True, False])
def test_forked_ranks_name_the_rank_that_failed_not_the_first_reported(tmp_path, cause_rank_raised):
    """Forked ranks (--start-method=forkserver): torch reports the first rank it saw end, here one
    that only lost its peer; every rank that raised left an error file."""
    from labkit.jobs.failures import read_failure

    attempt = tmp_path / "run-id" / "attempt_0"
    lost = '{"message": {"message": "RuntimeError: [pair.cc:561] Connection closed by peer [127.0.0.1]:51416"}}'
    for local_rank in (0, 1, 2, 3):  # rank 2 (global 6 on this node of 4) failed; the others lost it
        (attempt / str(local_rank)).mkdir(parents=True)
        (attempt / str(local_rank) / "stderr.log").write_text("")
        if local_rank != 2:
            (attempt / str(local_rank) / "error.json").write_text(lost)
        elif cause_rank_raised:
            (attempt / "2" / "error.json").write_text('{"message": {"message": "RuntimeError: injected fault"}}')
    (tmp_path / "failures.json").write_text(json.dumps([
        {"rank": 5, "local_rank": 1, "pid": 17810, "exit_code": 1, "signal": None, "timestamp": 1,
         "error_file": str(attempt / "1" / "error.json")}]))
    failure = read_failure(tmp_path)
    assert failure["rank"] == 6
    assert failure["exception"] == ("RuntimeError: injected fault" if cause_rank_raised
                                    else "died without raising (an exit or a signal)")
