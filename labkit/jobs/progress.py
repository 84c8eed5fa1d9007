"""Progress of a running job: a tqdm bar in a terminal, plain lines everywhere else.

In a notebook run headless by papermill (or a log file) a redrawn bar shows
nothing useful, so we print a short line every few seconds instead: the executed
notebook shows the progress, and papermill keeps saving because output arrives.
"""

import sys
import time

from tqdm import tqdm


class ProgressDisplay:
    def __init__(self, name: str, every_s: float = 5.0):
        self.name, self.every_s = name, every_s
        self.bar = None
        self.last_line = 0.0
        self.interactive = sys.stdout.isatty()
        self.started = time.time()

    def update(self, progress: dict) -> None:
        if self.interactive:
            self._update_bar(progress)
        elif time.time() - self.last_line >= self.every_s:
            self.last_line = time.time()
            print(self.line(progress), flush=True)

    def _update_bar(self, progress: dict) -> None:
        if not progress:
            return
        if self.bar is None:
            self.bar = tqdm(total=progress["total_steps"], desc=self.name, unit="step", dynamic_ncols=True)
        self.bar.update(progress["step"] - self.bar.n)
        self.bar.set_postfix(epoch=progress["epoch"], loss=f"{progress['loss']:.3f}",
                             img_s=f"{progress['img_s']:.0f}", refresh=False)

    def line(self, progress: dict) -> str:
        elapsed = f"{time.time() - self.started:5.0f}s"
        if not progress:
            return f"{self.name}: starting ({elapsed})"
        return (f"{self.name}: step {progress['step']}/{progress['total_steps']} epoch {progress['epoch']} "
                f"loss {progress['loss']:.3f} {progress['img_s']:.0f} img/s ({elapsed})")

    def close(self, progress: dict, status: str) -> None:
        if self.bar is not None:
            if progress:
                self.bar.update(progress["step"] - self.bar.n)
            self.bar.close()
        print(f"{self.name}: {status} after {time.time() - self.started:.0f} s", flush=True)
