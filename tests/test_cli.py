"""The real `labkit` CLI end to end, and every bad input it must refuse in one line.

The answers that depend on the machine's GPUs are tested against a faked device query
(`gpus`), so they hold on a GPU host as on a CPU one; no test needs a GPU."""

import json
import re
from contextlib import nullcontext

import pytest
from PIL import Image

from conftest import labkit_cli
from labkit import hardware
from labkit.cli import main


def fake_gpus(monkeypatch, count: int) -> None:
    """Make labkit's device query (labkit.hardware, which profiles and `labkit machine` ask)
    see `count` usable GPUs, whatever this machine has."""
    monkeypatch.setattr(hardware, "gpu_count", lambda: count)
    monkeypatch.setattr(hardware, "gpu_names", lambda: ["Fake GPU"] * count)
    monkeypatch.setattr(hardware, "system_gpus", lambda: [("Fake GPU", "580.65.06")] * count)
    monkeypatch.setattr(hardware, "has_imagenet", lambda: False)


@pytest.fixture
def no_gpu(monkeypatch):
    fake_gpus(monkeypatch, 0)


BAD_INPUTS = [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--strategy", "ddp", "--profile", "huge"], "unknown profile 'huge'"),
    (["--strategy", "ddp", "--set", "model=vgg"], "unknown model 'vgg'"),
    (["--strategy", "ddp", "--set", "dataset=mnist"], "unknown dataset 'mnist'"),
    (["--strategy", "ddp", "--set", "colour=red"], "unknown config key(s) ['colour']"),
    (["--strategy", "ddp", "--set", "bucket_mb=5"], "options of 'ddp': ddp_bucket_cap_mb"),  # bucketed's option
    (["--strategy", "bucketed", "--set", "compress=int8"], "compress='int8' is not one of none, fp16, bf16"),
    (["--strategy", "bucketed", "--set", "bucket_mb=lots"], "bucket_mb=lots: expected a float"),
    (["--strategy", "ddp", "--set", "dtype=float16"], "dtype='float16' is not one of"),
    (["--strategy", "ps_sharded", "--set", "amp=fp16"], "ps_sharded does not support amp=fp16"),
    (["--strategy", "powersgd", "--set", "amp=fp16"], "powersgd does not support amp=fp16"),
    (["--strategy", "powersgd", "--set", "channels_last=true"], "powersgd does not support channels_last"),
    (["--strategy", "ddp", "--set", "batch_size=big"], "expected a value of type int"),
    (["--strategy", "ddp", "--set", "lr"], "expected key=value"),
    (["--strategy", "ddp", "--nproc", "0"], "nproc must be at least 1"),
    (["--strategy", "ddp", "--set", "batch_size=5000"], "needs 20000 training images"),
    (["--strategy", "ddp", "--set", "dataset=imagefolder", "--set", "data_dir=/nonexistent/x"], "not found"),
    (["--strategy", "ddp", "--set", "backend=nccl"], "nccl needs device=cuda"),
    (["--strategy", "ddp", "--set", "device=cuda"], "no GPU is visible"),
    (["--strategy", "single", "--nproc", "2"], "runs one process"),
    (["--strategy", "ps", "--nproc", "1"], "needs a server and a worker"),
    (["--strategy", "powersgd", "--set", "powersgd_start_iter=1"], "powersgd_start_iter must be at least 2"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys, no_gpu):
    out = tmp_path / "run"
    with nullcontext():
        code = main(["run", "--profile", "cpu", *args, "--out", str(out)] if "--profile" not in args
                    else ["run", *args, "--out", str(out)])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(("labkit: error:", "labkit run: error:"))
    assert not out.exists()  # nothing half-written


def test_cuda_ranks_are_checked_against_the_gpus(tmp_path, capsys, monkeypatch):
    fake_gpus(monkeypatch, 1)  # a GPU host: device=cuda is accepted, but each rank needs a GPU of its own
    code = main(["run", "--profile", "cpu", "--strategy", "ddp", "--set", "device=cuda", "--out", str(tmp_path / "run")])
    assert code == 2 and "4 ranks but 1 GPU(s) visible" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_empty_class_folder_and_hidden_folder(tmp_path, capsys):
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / "x.jpg")
    (tmp_path / "data" / "train" / ".ipynb_checkpoints").mkdir()
    code = main(["run", "--strategy", "ddp", "--profile", "cpu", "--out", str(tmp_path / "run"),
                 "--set", "dataset=imagefolder", "--set", f"data_dir={tmp_path / 'data'}", "--set", "num_classes=2"])
    err = capsys.readouterr().err
    assert code == 2 and ".ipynb_checkpoints holds no image" in err and "hidden folders" in err


def test_console_script_exit_code_for_bad_input():
    proc = labkit_cli("run", "--strategy", "ddp", "--profile", "cpu", "--set", "nproc=-3", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["labkit: error: nproc must be at least 1 (got -3)"]


@pytest.mark.parametrize("gpus,profile", [(0, "cpu"), (2, "synthetic")])
def test_machine_reports_the_devices_and_the_auto_profile(gpus, profile, monkeypatch, capsys):
    fake_gpus(monkeypatch, gpus)
    assert main(["machine"]) == 0
    out = capsys.readouterr().out
    assert "gloo" in out and re.search(rf"^auto profile\s+{profile} — ", out, re.M), out


def test_sweep_runs_one_method_over_world_sizes(tmp_path):
    proc = labkit_cli("sweep", "--strategy", "allreduce", "--nproc", "1,2", "--profile", "cpu",
                      "--set", "max_steps=2", "--set", "calibration_steps=0", env={"LABKIT_RESULTS": str(tmp_path)})
    results = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/result.json")]
    assert sorted(r["world_size"] for r in results) == [1, 2] and all(r["status"] == "ok" for r in results)
    table = proc.stdout.strip().splitlines()[-3:]  # header, then one row per world size
    assert "scaling_efficiency" in table[0] and float(table[1].split()[-1]) == pytest.approx(1.0)
