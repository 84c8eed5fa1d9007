"""Progress: which display is chosen where, the plain lines papermill shows, a tolerant
reader of progress.jsonl, and `labkit lab`'s cell status with the kernel's notices kept aside."""

import json
import math
import re
import sys
import time
import types

import pytest

from labkit.jobs.progress import ProgressDisplay, choose_mode, current_mode, last_progress, parse_progress_line
from labkit import lab

JUPYTERLAB = dict(in_kernel=True, allow_stdin=True, widgets=True, tty=False)
PAPERMILL = dict(in_kernel=True, allow_stdin=False, widgets=True, tty=False)


@pytest.mark.parametrize("env, facts, mode", [
    ({}, JUPYTERLAB, "widget"),
    ({}, PAPERMILL, "lines"),
    ({"JPY_SESSION_NAME": "x.ipynb"}, PAPERMILL, "lines"),  # the request's header wins over the env
    ({"JPY_SESSION_NAME": "x.ipynb"}, {**PAPERMILL, "allow_stdin": None}, "widget"),  # header unknown
    ({}, {**PAPERMILL, "allow_stdin": None}, "lines"),
    ({}, {**JUPYTERLAB, "widgets": False}, "lines"),  # no ipywidgets, or qtconsole
    ({"LABKIT_PROGRESS": "lines"}, JUPYTERLAB, "lines"),  # what `labkit lab` sets for its kernels
    ({"LABKIT_PROGRESS": "widget"}, {**JUPYTERLAB, "widgets": False}, "lines"),
    ({}, dict(in_kernel=False, allow_stdin=None, widgets=True, tty=True), "bar"),  # a terminal
    ({}, dict(in_kernel=False, allow_stdin=None, widgets=True, tty=False), "lines"),  # a pipe, a log file
])
def test_display_mode_follows_the_frontend(env, facts, mode):
    assert choose_mode(env, **facts) == mode


@pytest.mark.parametrize("allow_stdin, mode", [(True, "widget"), (False, "lines")])
def test_current_mode_reads_the_kernel_request_header(monkeypatch, allow_stdin, mode):
    header = {"header": {"msg_type": "execute_request"}, "content": {"code": "", "allow_stdin": allow_stdin}}
    kernel = types.SimpleNamespace(get_parent=lambda channel="shell": header)
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.delenv("LABKIT_PROGRESS", raising=False)
    assert current_mode() == mode


def test_a_real_kernel_picks_widgets_only_for_a_frontend_that_allows_input():
    """The same code in a real ipykernel: JupyterLab's requests allow input, papermill's do not."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env={**__import__("os").environ, "LABKIT_PROGRESS": ""})
    try:
        modes = {}
        for allow_stdin in (True, False):
            outputs = []
            kc.execute_interactive("from labkit.jobs.progress import current_mode; print(current_mode())",
                                   allow_stdin=allow_stdin, timeout=60,
                                   output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
                                   stdin_hook=lambda msg: None)
            modes[allow_stdin] = "".join(outputs).strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert modes == {True: "widget", False: "lines"}


def test_plain_lines_say_step_loss_speed_and_eta(capsys, monkeypatch):
    import labkit.jobs.progress as progress_module

    now = [0.0]  # a clock the test moves
    monkeypatch.setattr(progress_module.time, "time", lambda: now[0])
    display = ProgressDisplay("ddp-cpu", every_s=0, mode="lines")
    display.update({})
    now[0] = 10
    display.update({"epoch": 0, "step": 2, "total_steps": 10, "loss": 2.3031, "img_s": 150.4})
    now[0] = 20
    display.update({"epoch": 0, "step": 4, "total_steps": 10, "loss": 2.2518, "img_s": 161.0})
    now[0] = 30
    display.close({"epoch": 0, "step": 10, "total_steps": 10, "loss": 2.1, "img_s": 160.0}, "ok")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ddp-cpu: starting (0s)"
    assert lines[1] == "ddp-cpu: step 2/10 epoch 0 loss 2.303 150 img/s (10s, ETA ?)"
    assert lines[2] == "ddp-cpu: step 4/10 epoch 0 loss 2.252 161 img/s (20s, ETA 30s)"  # 2 steps / 10 s
    assert lines[3] == "ddp-cpu: ok after 30s — step 10/10, loss 2.100, 160 img/s"


def test_disturbed_steps_are_said_in_the_progress(capsys):
    """A step over 2 × the median (the summary's definition) is counted as disturbed among the
    steps seen after warm-up, in the lines and in the closing summary; a quiet run says nothing."""
    display = ProgressDisplay("ps-cpu", every_s=0, mode="lines")
    rates = [20.0, 180.0, 185.0, 184.0, 30.0, 186.0, 25.0, 183.0]  # steps 1–2 warm-up; 5 and 7 slowed
    for step, img_s in enumerate(rates, 1):
        display.update({"epoch": 0, "step": step, "total_steps": 8, "loss": 2.3, "img_s": img_s})
    display.close({"epoch": 0, "step": 8, "total_steps": 8, "loss": 2.3, "img_s": 183.0}, "ok")
    lines = capsys.readouterr().out.splitlines()
    assert "disturbed" not in lines[3]  # steps 3–4: none yet
    assert "1 of 3 steps disturbed" in lines[4] and "2 of 6 steps disturbed (machine busy)" in lines[-1]
    quiet = ProgressDisplay("ddp-cpu", every_s=0, mode="lines")
    for step in range(1, 6):
        quiet.update({"epoch": 0, "step": step, "total_steps": 5, "loss": 2.3, "img_s": 150.0 + step})
    assert "disturbed" not in capsys.readouterr().out


def test_the_bar_learns_its_total_from_the_first_line_and_counts_a_resumed_run_from_there(capsys):
    display = ProgressDisplay("ddp-cpu", mode="bar")
    display.update({})
    assert display.bar.total is None  # still starting
    display.update({"epoch": 2, "step": 50, "total_steps": 100, "loss": 2.0, "img_s": 90.0})
    display.update({"epoch": 2, "step": 52, "total_steps": 100, "loss": 1.9, "img_s": 95.0})
    assert (display.bar.total, display.bar.initial, display.bar.n) == (100, 50, 52)
    display.close({"epoch": 2, "step": 52, "total_steps": 100, "loss": 1.9, "img_s": 95.0}, "failed")
    captured = capsys.readouterr()
    assert "52/100" in captured.err and "loss 1.900, 95 img/s" in captured.err
    assert captured.out.startswith("ddp-cpu: failed after") and "step 52/100" in captured.out


def test_a_nan_loss_does_not_freeze_the_display(tmp_path, capsys):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"epoch": 0, "step": 1, "total_steps": 4, "loss": 2.3, "img_s": 10.0}\n'
                    '{"epoch": 0, "step": 2, "total_steps": 4, "loss": "nan", "img_s": 10.0}\n'  # as the worker writes it
                    '{"epoch": 0, "step": 3, "total_st')  # rank 0 is writing this one now
    progress = last_progress(path)
    assert progress["step"] == 2 and progress["loss"] == "nan"
    assert math.isnan(parse_progress_line(json.dumps({"loss": float("nan")}))["loss"])  # json's own NaN reads too
    assert parse_progress_line('{"loss": null, "step": 5}') == {"loss": None, "step": 5}
    assert parse_progress_line('[1, 2]') is None and parse_progress_line('{"loss": nan}') is None  # not JSON
    display = ProgressDisplay("run", every_s=0, mode="lines")
    display.update(progress)
    display.update({**progress, "loss": float("-inf")})
    display.update({**progress, "loss": None})
    out = capsys.readouterr().out
    assert "loss nan" in out and "loss -inf" in out and "loss –" in out


def test_a_real_run_in_a_pipe_prints_lines_and_a_summary(tmp_path, monkeypatch, capsys):
    """Job.wait on a real 2-rank run, stdout not a terminal: text lines, then the summary."""
    import labkit

    monkeypatch.delenv("LABKIT_PROGRESS", raising=False)
    job = labkit.launch(profile="cpu", strategy="allreduce", nproc=2, max_steps=4, out_dir=str(tmp_path / "run"),
                        calibration_steps=0)
    assert job.wait() == "ok"
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{job.cfg.name}: starting")
    assert out[-1].startswith(f"{job.cfg.name}: ok after") and "step 4/4, loss " in out[-1] and " img/s" in out[-1]


# -- labkit lab --------------------------------------------------------------------------
def test_lab_reports_each_cell_and_keeps_kernel_notices_aside(tmp_path, monkeypatch, capsys):
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}},
          "cells": [{"cell_type": "code", "id": "a", "metadata": {"tags": ["parameters"]}, "outputs": [],
                     "execution_count": None, "source": "steps = 1"},
                    {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "words"},
                    {"cell_type": "code", "id": "c", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "import os\nprint('steps', steps, os.environ['LABKIT_PROGRESS'])"}]}
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "01_tiny.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(lab, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path / "results"))
    written = lab.run_notebooks({"steps": 3})
    out = capsys.readouterr().out
    assert "[01_tiny] cell 3/3 `import os`" in out  # notebook, cell / cells, its first line
    assert "    steps 3 lines" in out  # the cell's output, and the kernel was told to print lines
    assert "== 01_tiny.ipynb done in" in out and "without encryption" not in out
    assert written == [tmp_path / "results" / "notebooks" / "01_tiny.ipynb"]


def test_kernel_log_echo_filters_known_notices_only(tmp_path, capsys):
    log = tmp_path / "k.log"
    log.write_text("[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All ...\n"
                   "0.00s - Debugger warning: It seems that frozen modules are being used\n"
                   "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n"  # at shutdown, after the last cell
                   "Segmentation fault in libfoo\n"
                   "half a li")
    reporter = lab.CellReporter("01_x", 3, log, out=sys.stdout)
    reporter._echo_kernel_log()
    assert capsys.readouterr().out == "    kernel: Segmentation fault in libfoo\n"
    with open(log, "a") as f:
        f.write("ne\n")
    reporter._echo_kernel_log()
    assert capsys.readouterr().out == "    kernel: half a line\n"


def test_a_quiet_cell_gets_a_still_running_line(tmp_path, capsys):
    cell = types.SimpleNamespace(source="# the run\njob.wait()\n")
    with lab.CellReporter("02_ddp", 12, tmp_path / "none.log", quiet_s=0.2, out=sys.stdout) as reporter:
        reporter.cell_execute(cell=cell, cell_index=7)
        time.sleep(1.6)  # the watcher looks once a second
        reporter.cell_started -= 75  # as if the cell had started 75 s earlier
        assert re.fullmatch(r"\[02_ddp\] cell 1/12 `job.wait\(\)` running for 1m1\ds", reporter.status())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[02_ddp] cell 1/12 `job.wait()`"  # the first line that is not a comment
    assert re.fullmatch(r"\[02_ddp\] cell 1/12 `job.wait\(\)` running for \ds", lines[1])
