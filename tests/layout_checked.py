"""The parameter servers, checked: after every pull each rank's conv weights must still be
channels_last (test_gpu_path runs these as `--strategy tests/layout_checked.py:CheckedPS`).
A pull that dropped the layout (vector_to_parameters does) raises, and the run fails."""

import torch

from labkit.strategies.ps import ParameterServer
from labkit.strategies.ps_sharded import ShardedServer


def check_layout(model, rank):
    for name, p in model.named_parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            raise AssertionError(f"rank {rank}: {name} lost channels_last after the pull")


class CheckedPS(ParameterServer):
    def sync_parameters(self, model):
        super().sync_parameters(model)
        check_layout(model, self.rank)


class CheckedShardedServer(ShardedServer):
    def sync_parameters(self, model):
        super().sync_parameters(model)
        check_layout(model, self.rank)
