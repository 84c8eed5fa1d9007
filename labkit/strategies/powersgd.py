"""powersgd — DDP with PyTorch's PowerSGD communication hook (low-rank gradients).

Idea (Vogels et al., 2019): a gradient matrix M (n×m) is approximated as P·Qᵀ with
rank r ≪ n, m, found by one step of power iteration; ranks all-reduce P (n×r) and
Q (m×r) instead of M, and the error left over is fed back into the next step so
nothing is lost for good. Vectors (biases, BatchNorm) and matrices too small to
gain are sent as they are.

Communication: for the first `powersgd_start_iter` steps plain all-reduce, then
about r·(n+m) instead of n·m values per matrix. Option `powersgd_rank` (r).
Compare bytes per step and final accuracy with `ddp`.
"""

from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

from .ddp import TorchDDP


class PowerSGD(TorchDDP):
    def register_hook(self, ddp):
        self.steps_done = 0
        self.shapes = [p.shape for p in ddp.module.parameters() if p.requires_grad]
        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=self.cfg.powersgd_rank,
                                       start_powerSGD_iter=self.cfg.powersgd_start_iter)
        ddp.register_comm_hook(state, powersgd.powerSGD_hook)

    def sync_gradients(self, model):
        self.steps_done += 1
        full = self.steps_done <= self.cfg.powersgd_start_iter
        values = sum(self.values_on_wire(shape, full) for shape in self.shapes)
        self.count_all_reduce(4 * values)  # fp32

    def values_on_wire(self, shape, full: bool) -> int:
        """What PowerSGD sends for one tensor (its rule: compress a matrix only when
        (n+m)·r is at most half of n·m, the default min_compression_rate of 2)."""
        numel = shape.numel()
        if full or len(shape) < 2:
            return numel
        n, m, r = shape[0], numel // shape[0], self.cfg.powersgd_rank
        return (n + m) * r if numel >= 2 * (n + m) * r else numel
