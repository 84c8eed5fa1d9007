"""A run owns its folder (issue 31): nothing overwritten or mixed, every refusal one line, every
way a run ends leaves a status, nothing left behind. Real torchrun wherever a run is involved
(2 gloo ranks, simple_cnn: a few seconds a run)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, labkit_cli, processes_of
from labkit.cli import main
from labkit.config import ConfigError

QUICK = ["--strategy", "ddp", "--profile", "cpu", "--nproc", "2", "--max-steps", "4", "--set", "model=simple_cnn",
         "--set", "calibration_steps=0"]
LONG = ["--strategy", "ddp", "--profile", "cpu", "--nproc", "2", "--set", "epochs=200", "--set", "model=simple_cnn",
        "--set", "calibration_steps=0"]


def refused(capsys, *args) -> str:
    """Run `labkit ARGS` in this process; it must refuse with exit 2 and one line: that line."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("labkit: error: "), (code, err)
    return err[0]


def status_of(folder: Path) -> str:
    return json.loads((folder / "result.json").read_text())["status"]


def wait_for_steps(folder: Path, steps: int = 2, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = folder / "progress.jsonl"
        if progress.exists() and len(progress.read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps in {folder} after {timeout} s")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One real finished run (status ok), shared by the tests that must leave it as it is."""
    out = tmp_path_factory.mktemp("finished") / "run"
    labkit_cli("run", *QUICK, "--out", out)
    assert status_of(out) == "ok"
    return out


# -- 1. a run starts only in a new or empty folder ------------------------------------------

def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text('{"mine": 1}')
    line = refused(capsys, "run", *QUICK, "--out", tmp_path / "p")
    assert "holds files that are not a run (config.json)" in line
    assert (tmp_path / "p" / "config.json").read_text() == '{"mine": 1}'
    assert sorted(os.listdir(tmp_path / "p")) == ["config.json"]


def test_an_empty_folder_is_taken_and_nothing_of_the_lab_is_left_anywhere(tmp_path):
    import shutil
    import tempfile

    out = tmp_path / "empty"
    out.mkdir()
    tmp = tempfile.mkdtemp(prefix="t")  # a short TMPDIR: a Unix socket's path lives under it
    try:
        labkit_cli("run", *QUICK, "--out", out, env={"TMPDIR": tmp, "LABKIT_RESULTS": str(tmp_path / "results")})
        assert status_of(out) == "ok"
        assert not list(out.glob(".labkit*.lock")) and not list((tmp_path / "results").glob("*.lock"))
        assert os.listdir(tmp) == []  # torch's error files, torchelastic_* and pymp-* went with the job's temp folder
        assert not processes_of(out)
    finally:
        shutil.rmtree(tmp)


def test_a_long_temp_path_falls_back_to_the_systems(monkeypatch, tmp_path):
    import tempfile

    from labkit.jobs.command import job_temp_dir

    short = job_temp_dir()
    assert short and Path(short).is_dir()
    os.rmdir(short)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("x" * 80)))
    (tmp_path / ("x" * 80)).mkdir()
    assert job_temp_dir() is None and os.listdir(tmp_path / ("x" * 80)) == []


def test_a_new_run_in_a_failed_runs_folder_is_refused_not_mixed(tmp_path, capsys):
    out = tmp_path / "a"
    proc = labkit_cli("run", *QUICK, "--set", "checkpoint_every=2", "--set", "fault=1:3:raise", "--out", out,
                      check=False)
    assert proc.returncode == 1 and status_of(out) == "failed"
    before = (out / "config.json").read_text()
    line = refused(capsys, "run", *QUICK, "--set", "seed=7", "--set", "checkpoint_every=2", "--out", out)
    assert "holds an unfinished run (status failed)" in line and f"--resume {out}" in line
    assert (out / "config.json").read_text() == before and status_of(out) == "failed"


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    import labkit

    out = tmp_path / "busy"
    job = labkit.launch(profile="cpu", strategy="ddp", nproc=2, epochs=200, model="simple_cnn", calibration_steps=0,
                        out_dir=str(out))
    try:
        wait_for_steps(out)
        line = refused(capsys, "run", *QUICK, "--set", "seed=7", "--out", out)
        assert "a run in progress" in line and str(os.getpid()) in line
        with pytest.raises(ConfigError, match="in use by another run"):  # the API too, even past make_config
            from labkit.jobs.job import Job

            Job(job.cfg).start()
        assert json.loads((out / "config.json").read_text())["seed"] == 0
    finally:
        job.cancel()
    assert job.status == "interrupted" and not (out / ".labkit.lock").exists()


# -- 2, 3. a finished result is never rewritten; resume changes nothing but restarts ------------

def test_resume_of_a_finished_run_is_refused_and_its_result_stands(finished, capsys):
    before = (finished / "result.json").read_bytes()
    assert "holds a finished run (status ok): nothing to resume" in refused(capsys, "run", "--resume", finished)
    assert "holds a finished run (status ok)" in refused(capsys, "run", *QUICK, "--out", finished)
    assert (finished / "result.json").read_bytes() == before


@pytest.mark.parametrize("extra", [["--max-steps", "9"], ["--nproc", "4"], ["--set", "lr=0.5"], ["--out", "x"],
                                   ["--strategy", "ring"], ["--profile", "cpu"]])
def test_resume_refuses_what_would_change_the_run(extra, tmp_path, capsys):
    line = refused(capsys, "run", "--resume", tmp_path, *extra)
    assert "exactly as it was set up; drop " + extra[0] in line


# -- 4. every setting validated before launch, nothing written first ---------------------------

@pytest.mark.parametrize("setting,message", [
    ("lr=-1", "lr=-1.0: give a learning rate > 0"), ("lr=nan", "lr=nan: give a finite number"),
    ("watchdog_s=-1", "watchdog_s=-1.0: the watchdog's wait must be > 0"), ("watchdog_s=nan", "watchdog_s=nan"),
    ("pg_timeout_s=0", "pg_timeout_s=0.0: a collective's timeout must be > 0"),
    ("fault=7:1:raise", "there is no rank 7 in a run of 2 rank(s)"), ("fault=1:0:raise", "steps count from 1"),
    ("momentum=-0.5", "neither can be negative"), ("nodes=10", "10 nodes do not divide 2 ranks"),
    ("straggler=5:2", "straggler='5:2'")])
def test_a_bad_value_is_refused_before_anything_is_written(setting, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in refused(capsys, "run", *QUICK, "--set", setting, "--out", out)
    assert not out.exists()


def test_too_many_emulated_nodes_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, "run", *QUICK[:4], "--nproc", "10", "--set", "nodes=10", "--out", out)
    assert "at most 9 emulated nodes" in line or "emulated cluster" in line
    assert not out.exists()


def test_a_sweep_checks_every_method_before_its_first_run(tmp_path, capsys):
    os.environ["LABKIT_RESULTS"] = str(tmp_path)
    try:
        line = refused(capsys, "sweep", "--strategy", "ddp,nope", "--profile", "cpu", "--set", "max_steps=2")
    finally:
        del os.environ["LABKIT_RESULTS"]
    assert "unknown strategy 'nope'" in line and not (tmp_path / "runs").exists()


# -- 5. every way a run ends leaves a status ------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does(sig, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", *LONG, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"{signal.Signals(sig).name}: stopped every process" in err
    assert status_of(out) == "interrupted" and not processes_of(out) and not (out / ".labkit.lock").exists()


def test_wait_with_a_timeout_leaves_the_run_running(tmp_path):
    import labkit
    from labkit.jobs.job import StillRunning

    out = tmp_path / "run"
    job = labkit.launch(profile="cpu", strategy="ddp", nproc=2, epochs=200, model="simple_cnn", calibration_steps=0,
                        out_dir=str(out))
    try:
        with pytest.raises(StillRunning, match="still running after 1 s; it goes on"):
            job.wait(progress=False, timeout=1)
        steps = len((out / "progress.jsonl").read_text().splitlines()) if (out / "progress.jsonl").exists() else 0
        wait_for_steps(out, steps + 2)  # it went on stepping
        assert job.poll() == "running"
    finally:
        job.cancel()
    assert job.status == "interrupted"


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A small tmpfs mounted at `folder` for the test's length (mounting needs root: CI runs as root)."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_said_in_one_line_and_the_last_good_file_kept(tmp_path):
    """A small tmpfs fills up while a result and a checkpoint are written (root: mount)."""
    import torch

    from labkit.files import save_checkpoint, write_json

    with tmpfs(tmp_path / "disk", "size=512k") as disk:
        write_json(disk / "result.json", {"status": "ok"})
        save_checkpoint(disk / "checkpoint.pt", {"w": torch.zeros(1000)})
        with pytest.raises(OSError, match=f"no space left on {disk} \\(writing checkpoint.pt\\)"):
            save_checkpoint(disk / "checkpoint.pt", {"w": torch.zeros(1_000_000)})  # 4 MB into 512 KB
        with pytest.raises(OSError, match=f"no space left on {disk} \\(writing result.json\\)"):
            write_json(disk / "result.json", {"status": "ok", "pad": "x" * 1_000_000})
        assert json.loads((disk / "result.json").read_text()) == {"status": "ok"}
        assert torch.load(disk / "checkpoint.pt", weights_only=True)["w"].numel() == 1000
        assert sorted(os.listdir(disk)) == ["checkpoint.pt", "result.json"]  # no half-written temp file


# -- 6. a rank that stops is named; a method file that hangs or exits on import ---------------

def test_a_stopped_rank_is_named_before_the_collective_timeout(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", *LONG, "--set", "pg_timeout_s=300",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(out, 3)
    victim = int((out / "logs" / "alive-1").read_text().split()[0])
    stopped_at = time.time()
    os.kill(victim, signal.SIGSTOP)
    _, err = proc.communicate(timeout=120)
    elapsed = time.time() - stopped_at
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 1 and result["status"] == "hung"
    assert result["failure"]["rank"] == 1 and "stopped (SIGSTOP" in result["failure"]["exception"]
    assert elapsed < 300 / 2, elapsed  # the collective's timeout would have named rank 0, which waited
    assert not processes_of(out)


def test_a_method_file_that_exits_on_import_is_an_error(tmp_path, capsys):
    path = tmp_path / "quits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    line = refused(capsys, "run", "--strategy", f"{path}:Quits", "--profile", "cpu", "--out", tmp_path / "run")
    assert "importing it called sys.exit(0)" in line and not (tmp_path / "run").exists()


def test_a_method_file_that_hangs_on_import_is_reported():
    import tempfile

    from labkit.strategies import check_import

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "waits.py"
        path.write_text("import time\nwhile True:\n    time.sleep(1)\n")
        started = time.time()
        with pytest.raises(ConfigError, match="importing it did not finish in 5 s"):
            check_import(f"{path}:Waits", timeout_s=5)
        assert time.time() - started < 30


# -- 7. one line, never a traceback -------------------------------------------------------------

def test_bad_folders_and_files_get_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in refused(capsys, "run", *QUICK, "--out", tmp_path / "file" / "run")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "result.json").write_text("garbage{")
    assert "a result.json that is not a labkit result" in refused(capsys, "run", *QUICK, "--out", tmp_path / "g")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"strategy": "ddp", ')
    (broken / "checkpoint.pt").write_bytes(os.urandom(4096))
    assert "is not a readable run config" in refused(capsys, "run", "--resume", broken)
    (broken / "config.json").write_text(json.dumps({"strategy": "ddp", "name": "b", "out_dir": str(broken)}))
    line = refused(capsys, "run", "--resume", broken)
    assert "checkpoint.pt is corrupt or not a checkpoint" in line and "weights_only" not in line
    assert "is not a folder" in refused(capsys, "data", "verify", tmp_path / "file")
    for sizes in ("2,x", "0"):
        assert "give world sizes of 1 or more" in refused(capsys, "check-strategy", "ddp", "--nproc", sizes)


def test_a_read_only_folder_is_refused(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        assert "cannot write in" in refused(capsys, "run", *QUICK, "--out", disk / "run")


def test_a_random_bytes_checkpoint_says_corrupt_not_weights_only(tmp_path):
    from labkit.files import CorruptCheckpoint, load_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CorruptCheckpoint, match="corrupt or not a checkpoint") as error:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "weights_only" not in str(error.value)


def test_refusals_need_no_torch(finished, tmp_path):
    """A refusal decidable before launch (a folder, a name, a value) is answered without importing
    torch: timed against `labkit --help` (imports argparse and the registry only), as a ratio."""
    def seconds(*args) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "labkit.cli", *map(str, args)], cwd=REPO, capture_output=True)
        return time.perf_counter() - started

    helps, refusals = [], []
    for _ in range(3):  # interleaved, medians
        helps.append(seconds("--help"))
        refusals.append(max(seconds("run", *QUICK, "--out", finished), seconds("run", "--strategy", "nope"),
                            seconds("run", *QUICK, "--set", "lr=-1", "--out", tmp_path / "x")))
    ratio = sorted(refusals)[1] / sorted(helps)[1]
    code = "import sys, labkit.cli, labkit.profiles, labkit.run_folder; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout.strip() == "False"
    assert ratio < 6, ratio  # importing torch alone is ~15 × labkit --help here


# -- 8. on real nodes the result lands on node 0 ----------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_rank_0_writes_the_result_even_when_it_joins_last(tmp_path):
    port = free_port()

    def node(rank: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", *QUICK[:4], "--nproc", "2",
                                 "--max-steps", "4", "--set", "model=simple_cnn", "--set", "calibration_steps=0",
                                 "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}",
                                 "--interface", "lo", "--name", "mn", "--out", str(tmp_path / f"node{rank}")],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # node 1 first: c10d's rendezvous would make it the first node (global rank 0) by arrival
    first = node(1)
    time.sleep(3)
    second = node(0)
    out1, err1 = first.communicate(timeout=240)
    out0, err0 = second.communicate(timeout=240)
    assert second.returncode == 0 and first.returncode == 0, (err0[-2000:], err1[-2000:])
    assert status_of(tmp_path / "node0") == "ok" and not (tmp_path / "node1" / "result.json").exists()
    assert (tmp_path / "node0" / "checkpoint.pt").exists()
    assert "node 0 wrote the run's result.json" in out1


def test_compare_lists_a_result_it_cannot_read_and_goes_on(finished, tmp_path):
    from labkit.report.selection import load_results, select_runs

    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "result.json").write_text((finished / "result.json").read_text()[:200])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "result.json").write_text('["not", "a", "result"]')
    chosen = select_runs(load_results([finished, tmp_path / "cut", tmp_path / "other"]))
    assert [r["path"] for r in chosen.kept] == [str(finished)]
    reasons = {Path(r["path"]).name: why for r, why in chosen.left_out}
    assert reasons.keys() == {"cut", "other"} and all("result.json unreadable" in why for why in reasons.values())
    proc = labkit_cli("compare", finished, tmp_path / "cut", env={"LABKIT_RESULTS": str(tmp_path / "results")})
    assert "result.json unreadable" in proc.stdout
