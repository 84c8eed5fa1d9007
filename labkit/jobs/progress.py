"""Progress of a running job, shown the way the place it runs in can show it.

- a notebook in JupyterLab (or Notebook, VS Code): a widget bar updated in place —
  step / total, loss, img/s, ETA — then one summary line;
- a terminal: tqdm's text bar, redrawn on one line;
- everywhere else (papermill, a log file, a pipe): a plain line every few seconds, so
  the executed notebook or the log shows progress, and papermill keeps saving.

Telling JupyterLab from papermill: both run the cell in an ipykernel, so tqdm.auto
picks widgets for both, and papermill would store a dead widget. What differs is the
client. A person's frontend sends execute requests that allow input(); nbclient
(papermill) never does. The header of the request being executed says which.
`LABKIT_PROGRESS=widget|bar|lines` overrides the choice; `labkit lab` sets `lines`.

progress.jsonl is read tolerantly: a line being written is skipped. The worker writes a
NaN or inf loss as the text "nan"/"inf" (strict JSON has no NaN), shown as it is.

A step far slower than the others (over DISTURBED_FACTOR × the median, the definition the
summary uses: training/timing.py) was disturbed — another program had the cores. The display
counts those among the steps it has seen after warm-up and says so beside the rate, so a
student sees a busy moment when it happens; result.json counts every step.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import statistics
from pathlib import Path

from labkit.config import RunConfig
from labkit.training.timing import DISTURBED_FACTOR

MODES = ("widget", "bar", "lines")


# -- reading progress.jsonl -----------------------------------------------------------
def parse_progress_line(text: str) -> dict | None:
    """One progress line as a dict; None when it is not (yet) a complete JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def last_progress(path: Path) -> dict:
    """The last complete line of a progress.jsonl (empty before the first step)."""
    if not path.exists():
        return {}
    for line in reversed(path.read_bytes().splitlines()):
        value = parse_progress_line(line.decode(errors="replace"))
        if value is not None:
            return value
    return {}


# -- which display --------------------------------------------------------------------
def choose_mode(env: dict, in_kernel: bool, allow_stdin: bool | None, widgets: bool, tty: bool) -> str:
    """'widget', 'bar' or 'lines', from the facts of where we run.

    in_kernel: running in an ipykernel; allow_stdin: whether the request being executed
    allows input() (None: not known, e.g. outside the cell's thread); widgets: ipywidgets
    importable and the frontend not a console without widgets (qtconsole, Spyder)."""
    forced = env.get("LABKIT_PROGRESS", "").strip().lower()
    if forced in MODES:
        return "lines" if forced == "widget" and not widgets else forced
    if in_kernel:
        # A person's frontend allows input(); papermill does not. Where the request is not
        # known, a kernel started by a Jupyter server (JPY_SESSION_NAME) has a frontend.
        attached = allow_stdin if allow_stdin is not None else bool(env.get("JPY_SESSION_NAME"))
        return "widget" if attached and widgets else "lines"
    return "bar" if tty else "lines"


def _kernel_allow_stdin() -> tuple[bool, bool | None]:
    """(in an ipykernel, allow_stdin of the request being executed or None)."""
    if "ipykernel" not in sys.modules:
        return False, None
    try:
        kernel = sys.modules["IPython"].get_ipython().kernel
    except AttributeError:  # plain IPython, or no shell
        return False, None
    try:
        header = kernel.get_parent("shell")
    except Exception:  # an ipykernel without get_parent(channel)
        header = getattr(kernel, "_parent_header", {})
    content = (header or {}).get("content") or {}
    return True, content.get("allow_stdin") if "allow_stdin" in content else None


def current_mode() -> str:
    in_kernel, allow_stdin = _kernel_allow_stdin()
    console = any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ)
    widgets = not console and importlib.util.find_spec("ipywidgets") is not None
    return choose_mode(os.environ, in_kernel, allow_stdin, widgets, sys.stdout.isatty())


# -- the display ----------------------------------------------------------------------
def _loss(progress: dict) -> str:
    loss = progress.get("loss")
    if loss is None:
        return "–"
    if isinstance(loss, str):  # the worker writes "nan" / "inf" as text: strict JSON has no NaN
        return loss
    return f"{loss:.3f}" if math.isfinite(loss) else str(loss)


def duration(seconds: float) -> str:
    """12s, or 3m05s: how long something ran, for a person (progress lines, `labkit lab`)."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressDisplay:
    """Job.wait's view of a run: update(progress) every half second, close() at the end."""

    def __init__(self, name: str, every_s: float = 5.0, mode: str | None = None,
                 timing_warmup_steps: int = RunConfig.timing_warmup_steps):
        self.name, self.every_s, self.timing_warmup_steps = name, every_s, timing_warmup_steps
        self.rates = {}  # step → img/s of the progress lines seen after warm-up
        self.mode = mode or current_mode()
        self.bar = None
        self.last_line = 0.0
        self.started = time.time()
        self.first_seen = None  # (time, step) of the first progress line, for the ETA
        if self.mode != "lines":
            self._open_bar(None)

    def _open_bar(self, total: int | None) -> None:
        if self.mode == "widget":
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
        self.bar = tqdm(total=total, desc=self.name, unit="step", dynamic_ncols=True)
        self.bar.set_postfix_str("starting")

    def disturbed(self) -> str:
        """", 2 of 9 steps disturbed" when steps seen ran over DISTURBED_FACTOR × the median; else ""."""
        if not self.rates:
            return ""
        median = statistics.median(self.rates.values())  # a rate: a slow step has a low one
        slow = sum(rate * DISTURBED_FACTOR < median for rate in self.rates.values())
        return f", {slow} of {len(self.rates)} steps disturbed (machine busy)" if slow else ""

    def update(self, progress: dict) -> None:
        if progress.get("step", 0) > self.timing_warmup_steps and progress.get("img_s"):
            self.rates[progress["step"]] = progress["img_s"]
        if progress and self.first_seen is None:
            self.first_seen = (time.time(), progress.get("step", 0))
            if self.bar is not None:  # the total is now known; the rate counts from here
                self.bar.reset(total=progress.get("total_steps"))
                # a resumed run starts mid-way: its earlier steps do not count in the rate
                self.bar.initial = self.bar.n = self.bar.last_print_n = progress.get("step", 0)
        if self.bar is not None:
            if progress:
                self.bar.update(progress.get("step", 0) - self.bar.n)
                self.bar.set_postfix_str(f"loss {_loss(progress)}, {progress.get('img_s', 0):.0f} img/s"
                                         + self.disturbed())
            else:
                self.bar.refresh()  # the elapsed time ticks while the ranks start
        elif time.time() - self.last_line >= self.every_s:
            self.last_line = time.time()
            print(self.line(progress), flush=True)

    def eta_s(self, progress: dict) -> float | None:
        """Seconds left at the rate seen since the first progress line (None: no rate yet)."""
        if not progress or self.first_seen is None:
            return None
        t0, step0 = self.first_seen
        done = progress.get("step", 0) - step0
        if done <= 0:
            return None
        return (progress.get("total_steps", 0) - progress.get("step", 0)) * (time.time() - t0) / done

    def line(self, progress: dict) -> str:
        elapsed = duration(time.time() - self.started)
        if not progress:
            return f"{self.name}: starting ({elapsed})"
        eta = self.eta_s(progress)
        return (f"{self.name}: step {progress.get('step')}/{progress.get('total_steps')} "
                f"epoch {progress.get('epoch')} loss {_loss(progress)} {progress.get('img_s', 0):.0f} img/s"
                f"{self.disturbed()} ({elapsed}, ETA {'?' if eta is None else duration(eta)})")

    def summary(self, progress: dict, status: str) -> str:
        text = f"{self.name}: {status} after {duration(time.time() - self.started)}"
        if progress:
            text += (f" — step {progress.get('step')}/{progress.get('total_steps')}, loss {_loss(progress)}, "
                     f"{progress.get('img_s', 0):.0f} img/s{self.disturbed()}")
        return text

    def close(self, progress: dict, status: str) -> None:
        if self.bar is not None:
            if progress:
                self.update(progress)
            self.bar.close()  # a widget left short of its total turns red
        print(self.summary(progress, status), flush=True)
