"""single — one process, one device: the baseline every method is compared with.

Idea: the plain training loop. No second process, so nothing to synchronize: the
contract's defaults (no communication, `optimizer.step()`) are all it needs.
Compare: its img/s against `ddp` on n devices gives the scaling efficiency.
"""

from .base import About, Strategy


class Single(Strategy):
    about = About(defaults={"nproc": 1}, plain_process=True,  # a plain process: no torchrun, no rendezvous
                  refuse=lambda cfg, o: "strategy 'single' runs one process: use --nproc 1" if cfg.nproc != 1 else "")
