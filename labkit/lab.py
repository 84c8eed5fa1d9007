"""Run the notebooks headless with papermill, in order, into results/notebooks/.

Each executed copy keeps its outputs (figures inline), so results/notebooks/ is the
lab's record. A failing notebook stops the lab with its name and the failing cell.

While it runs, the terminal says which notebook and cell is running and for how long:
nbclient's cell hooks mark each cell's start and end, the cells' output is passed
through indented, and a quiet cell gets a "still running" line every `quiet_s`.
Kernels get LABKIT_PROGRESS=lines, so a job in a cell prints text lines, not a widget.

The kernel's own stderr (its start-up log, e.g. "Kernel is running over TCP without
encryption", and debugger notices) goes to results/notebooks/<name>.kernel.log; only
lines that are not such known notices are echoed, so a kernel crash still shows.
Where pyzmq has CurveZMQ, the kernel's channels are encrypted as well.

The lab ends (closing) with what it showed: the lessons table (results/lessons.json, each
notebook's measured claim, shown on this machine or not and why) and the original project's five
plots in results/plots/, drawn from the newest comparison (06) and learning sweep (05b).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from labkit.config import LAB_ROOT, ConfigError, results_root
from labkit.jobs.progress import duration

NOTEBOOKS = LAB_ROOT / "notebooks"

# Notices a kernel prints on start that say nothing about the lab; anything else is shown.
KERNEL_NOTICES = re.compile(r"Kernel is running over TCP without encryption"
                            r"|^\d+\.\d+s - "  # pydevd: "0.00s - Debugger warning: ... frozen modules"
                            # jupyter_client interrupts (SIGINT) every kernel it shuts down, finished or not
                            # (KernelManager.shutdown_kernel); an interrupted *cell* fails the notebook itself
                            r"|\[IPKernelApp\] ERROR \| KeyboardInterrupt caught in kernel"
                            r"|^\s*$")


class LabFailed(RuntimeError):
    pass


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """Every notebook, in sorted order (00_setup, 00b_collectives_primer, 01_…, 05b_…); `only`:
    those whose name starts with one of these numbers (the part before the first _: 00b, 05)."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name.split("_")[0] in only]
        if not paths:
            raise ConfigError(f"--only {','.join(only)} matches no notebook; choose from "
                              + ", ".join(p.name.split("_")[0] for p in notebook_paths()))
    return paths


class CellReporter:
    """Says in the terminal which cell of which notebook runs, and for how long.

    Its methods are nbclient hooks (on_cell_execute, on_cell_executed) and papermill's
    stdout/stderr files; a thread prints a status line when a cell has been quiet for
    quiet_s, and echoes the kernel log's lines that are not known notices."""

    def __init__(self, name: str, n_cells: int, kernel_log: Path, show_output: bool = True,
                 quiet_s: float = 30.0, out=None):
        self.name, self.n_cells, self.show_output, self.quiet_s = name, n_cells, show_output, quiet_s
        self.out = out or sys.stdout
        self.kernel_log, self.log_offset = kernel_log, 0
        self.cell, self.cell_started, self.cell_source = 0, 0.0, ""
        self.last_print = time.time()
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.partial = {"stdout": "", "stderr": ""}
        self.stdout, self.stderr = _Stream(self, "stdout"), _Stream(self, "stderr")
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)
            self.last_print = time.time()

    def status(self) -> str:
        return (f"[{self.name}] cell {self.cell}/{self.n_cells} `{self.cell_source}` "
                f"running for {duration(time.time() - self.cell_started)}")

    # nbclient hooks: keyword arguments cell, cell_index (and execute_reply)
    def cell_execute(self, cell, **_) -> None:
        self.cell += 1
        self.cell_started = time.time()
        first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
        self.cell_source = first.strip()[:60]
        self.say(f"[{self.name}] cell {self.cell}/{self.n_cells} `{self.cell_source}`")

    def cell_executed(self, **_) -> None:
        took = time.time() - self.cell_started
        if took >= 5:
            self.say(f"[{self.name}] cell {self.cell}/{self.n_cells} done in {duration(took)}")

    def write(self, stream: str, text: str) -> None:
        if not self.show_output:
            return
        lines = (self.partial[stream] + text).split("\n")
        self.partial[stream] = lines.pop()
        for line in lines:
            self.say(f"    {line.rstrip()}")

    def _echo_kernel_log(self) -> None:
        if not self.kernel_log.exists():
            return
        with open(self.kernel_log, "rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if not KERNEL_NOTICES.search(line):
                self.say(f"    kernel: {line}")

    def _watch(self) -> None:
        while not self.stopped.wait(1.0):
            self._echo_kernel_log()
            if self.cell and time.time() - self.last_print >= self.quiet_s:
                self.say(self.status())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stopped.set()
        self.thread.join()
        self._echo_kernel_log()
        for stream, rest in self.partial.items():
            if rest:
                self.write(stream, "\n")


class _Stream:
    """The file papermill writes a cell's stdout or stderr to."""

    def __init__(self, reporter: CellReporter, name: str):
        self.reporter, self.name = reporter, name

    def write(self, text: str) -> None:
        self.reporter.write(self.name, text)

    def flush(self) -> None:
        pass


def kernel_manager_class(stderr):
    """A kernel manager whose kernels write their own stderr to `stderr` (an open file),
    show job progress as text lines, and encrypt their channels where pyzmq can."""
    import zmq
    from jupyter_client import AsyncKernelManager

    class LabKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw["env"] = {**os.environ, **(kw.get("env") or {}), "LABKIT_PROGRESS": "lines"}
            kw["stderr"] = stderr
            if zmq.has("curve") and self.has_trait("transport_encryption"):
                kw["transport_encryption"] = "auto"  # CurveZMQ keys where the kernelspec supports them
            return await super().start_kernel(**kw)

    return LabKernelManager


def code_cell_count(path: Path, parameters: dict) -> int:
    """Cells papermill will execute: the non-empty code cells, plus its injected parameters."""
    cells = json.loads(path.read_text())["cells"]
    return sum(c["cell_type"] == "code" and bool("".join(c["source"]).strip()) for c in cells) + bool(parameters)


def run_notebooks(parameters: dict, only: list[str] | None = None, log_output: bool = True) -> list[Path]:
    """Execute the notebooks in order; log_output: pass the cells' output to the terminal."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = results_root() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths(only):
        target = out_dir / path.name
        kernel_log = out_dir / f"{path.stem}.kernel.log"
        kernel_log.unlink(missing_ok=True)
        print(f"== {path.name} → {target}", flush=True)
        started = time.time()
        reporter = CellReporter(path.stem, code_cell_count(path, parameters), kernel_log, show_output=log_output)
        try:
            with reporter, open(kernel_log, "ab") as kernel_stderr:
                papermill.execute_notebook(
                    str(path), str(target), parameters=parameters, cwd=str(LAB_ROOT), kernel_name="python3",
                    log_output=False, progress_bar=False, stdout_file=reporter.stdout, stderr_file=reporter.stderr,
                    on_cell_execute=reporter.cell_execute, on_cell_executed=reporter.cell_executed,
                    kernel_manager_class=kernel_manager_class(kernel_stderr))
        except PapermillExecutionError as error:
            raise LabFailed(f"notebook {path.name} failed in cell {error.exec_count}: "
                            f"{error.ename}: {error.evalue} (executed copy: {target})") from None
        print(f"== {path.name} done in {duration(time.time() - started)}", flush=True)
        written.append(target)
    closing()
    return written


def closing(draw: bool = True) -> None:
    """What this machine showed: the lessons table (nothing written when no notebook recorded a
    lesson: it says so), then, with `draw`, the five plots of lab_plots()."""
    from labkit.report import lessons

    entries = lessons.load()
    print(f"\n== lessons ({lessons.lessons_path()})" if entries else
          "\n== lessons: no lesson was recorded (no notebook that records one ran)", flush=True)
    if entries:
        print(lessons.table(entries), flush=True)
    if draw:
        for line in lab_plots():
            print(line, flush=True)


def lab_plots() -> list[str]:
    """The five plots (plots.FIVE, and the extras) into results/plots/, from the newest sweep of
    notebook 06 (results/runs/compare-…: throughput, time, overhead) and of 05b (runs trained
    whole epochs: loss and accuracy); lines that say what was drawn, or why nothing was."""
    import matplotlib

    matplotlib.use("Agg")  # a terminal has no display; the files are what is wanted
    import matplotlib.pyplot as plt

    from labkit.report import plots
    from labkit.report.selection import select_runs
    from labkit.report.tradeoffs import latest_sweep

    compared, trained = select_runs(latest_sweep("compare-")).kept, select_runs(latest_sweep("05b-")).kept
    if not compared and not trained:
        return ["== plots: no sweep of notebook 06 or 05b to draw from"]
    figures = plots.all_figures(compared or trained, trained)
    paths = plots.save_all(figures, results_root() / "plots")
    plt.close("all")
    return [f"== plots ({paths[0].parent}): " + ", ".join(p.name for p in paths)
            + ("" if compared else " (no sweep of notebook 06: from 05b's runs)")]
