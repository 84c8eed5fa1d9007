"""single — one process, one device: the baseline every method is compared with.

Idea: the plain training loop. No second process, so nothing to synchronize: the
contract's defaults (no communication, `optimizer.step()`) are all it needs.
Compare: its img/s against `ddp` on n devices gives the scaling efficiency.
"""

from labkit.errors import ConfigError

from .base import Strategy


class Single(Strategy):
    defaults = {"nproc": 1}
    needs_process_group = False  # a plain process: no torchrun, no rendezvous

    @classmethod
    def check(cls, cfg):
        if cfg.nproc != 1:
            raise ConfigError("strategy 'single' runs one process: use --nproc 1")
