"""single — one process, one device: the baseline every method is compared with.

Idea: the plain training loop. No second process, so nothing to synchronize: the
contract's defaults (no communication, `optimizer.step()`) are all it needs.
Compare: its img/s against `ddp` on n devices gives the scaling efficiency.
"""

from .base import Strategy


class Single(Strategy):
    pass
