"""Each rank overwrites logs/heartbeat-RANK with the step it is working on: the
Job's watchdog reads the files' age (is anyone moving?) and content (who is stuck).

And from a thread of its own, each second, it touches logs/alive-RANK (which holds its pid):
a rank waiting in a collective still does, one that is stopped (SIGSTOP) or wedged (a call
that never lets go of the interpreter) does not — so the Job names the rank that
stopped, not the healthy one whose collective timed out waiting for it (labkit.jobs.job)."""

import os
import threading
import time
from pathlib import Path

ALIVE_EVERY_S = 1.0


class Heartbeat:
    def __init__(self, path):
        self.fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        alive = Path(path).with_name(Path(path).name.replace("heartbeat-", "alive-"))
        self.alive_fd = os.open(alive, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(self.alive_fd, f"{os.getpid()}\n".encode())
        threading.Thread(target=self._keep_alive, name="labkit-alive", daemon=True).start()

    def _keep_alive(self) -> None:
        while True:
            try:
                os.utime(self.alive_fd)
            except OSError:  # closed as the process ends
                return
            time.sleep(ALIVE_EVERY_S)

    def beat(self, step: int) -> None:
        os.pwrite(self.fd, f"{step:>12}\n".encode(), 0)

    def touch(self) -> None:  # still alive (validating), same step
        os.utime(self.fd)
