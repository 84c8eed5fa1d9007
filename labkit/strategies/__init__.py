"""The synchronization methods, one file each, wired by hand in one dict.

Adding a method is one file plus one line here: a student can follow the wiring.
The contract every method follows is in base.py.
"""

from .allreduce import AllReduce
from .base import Strategy
from .bucketed import Bucketed
from .ddp import TorchDDP
from .overlap import Overlap
from .powersgd import PowerSGD
from .ps import ParameterServer
from .ps_sharded import ShardedServer
from .ring import Ring
from .single import Single

STRATEGIES = {
    "single": Single,
    "ddp": TorchDDP,
    "allreduce": AllReduce,
    "ps": ParameterServer,
    # advanced variants
    "bucketed": Bucketed,
    "overlap": Overlap,
    "ring": Ring,
    "ps_sharded": ShardedServer,
    "powersgd": PowerSGD,
}

__all__ = ["STRATEGIES", "Strategy"]
